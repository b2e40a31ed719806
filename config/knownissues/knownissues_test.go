package knownissues

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
)

func TestEmbeddedMatrixLoads(t *testing.T) {
	issues, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"falco#3286", "falco#2795", "falco#3276", "libs#2150", "libs#2118"}
	if len(issues) != len(want) {
		t.Fatalf("got %d issues, want %d", len(issues), len(want))
	}
	for i, id := range want {
		if issues[i].ID != id {
			t.Errorf("issues[%d].ID = %s, want %s", i, issues[i].ID, id)
		}
		if !strings.HasPrefix(issues[i].Reference, "https://github.com/falcosecurity/") {
			t.Errorf("%s: reference %q is not upstream", id, issues[i].Reference)
		}
	}
}

func TestParseErrorsNameEntryAndField(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"bad regexp", `issues:
- {id: falco#1, title: t, reference: "https://x", drivers: [kmod], match: {kernelRelease: "("}}`,
			[]string{"issues[0] (falco#1)", "match.kernelRelease"}},
		{"bad driver", `issues:
- {id: falco#1, title: t, reference: "https://x", drivers: [kmod], match: {distro: [cos]}}
- {id: falco#2, title: t, reference: "https://x", drivers: [bpf], match: {distro: [cos]}}`,
			[]string{"issues[1] (falco#2)", "drivers", `"bpf"`}},
		{"bad falco version", `issues:
- {id: falco#1, title: t, reference: "https://x", drivers: [kmod], falco: {fixed: "0.38"}, match: {distro: [cos]}}`,
			[]string{"issues[0] (falco#1)", "falco.fixed"}},
		{"empty match", `issues:
- {id: falco#1, title: t, reference: "https://x", drivers: [kmod], match: {}}`,
			[]string{"issues[0] (falco#1)", "match:"}},
		{"bad kernel range", `issues:
- {id: falco#1, title: t, reference: "https://x", drivers: [kmod], match: {kernelVersions: [{min: "6.6", below: "6.1"}]}}`,
			[]string{"issues[0] (falco#1)", "match.kernelVersions[0]"}},
		{"duplicate id", `issues:
- {id: falco#1, title: t, reference: "https://x", drivers: [kmod], match: {distro: [cos]}}
- {id: falco#1, title: t, reference: "https://x", drivers: [kmod], match: {distro: [cos]}}`,
			[]string{"issues[1] (falco#1)", "duplicate"}},
		{"unknown field", `issues:
- {id: falco#1, title: t, reference: "https://x", drivers: [kmod], match: {distros: [cos]}}`,
			[]string{"distros"}},
		{"bad overlay value", `issues:
- {id: falco#1, title: t, reference: "https://x", drivers: [kmod], match: {overlayTypes: [None]}}`,
			[]string{"issues[0] (falco#1)", "match.overlayTypes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse: %v, want ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestLoadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "issues.yaml")
	doc := `issues:
- id: example#7
  title: kmod breaks on an example kernel
  reference: https://example.com/7
  drivers: [kmod]
  sensors: [Builtin, Falco]
  match: {kernelRelease: '^6\.1\.'}
`
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	issues, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(issues) != 1 || issues[0].ID != "example#7" || len(issues[0].Sensors) != 2 {
		t.Fatalf("LoadFile = %+v", issues)
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
}

func facts(release, arch, distro, distroVersion, overlay string) v1alpha1.ProbeFacts {
	var f v1alpha1.ProbeFacts
	f.Kernel.Release.Value = release
	if v, err := kernelversion.ParseRelease(release); err == nil {
		f.Kernel.Version.Value = v.String()
	}
	f.Kernel.Architecture.Value = arch
	f.Distro.ID, f.Distro.VersionID = distro, distroVersion
	f.BTF.OverlayTypes.Value = overlay
	return f
}

func semver(t *testing.T, s string) *kernelversion.Version {
	t.Helper()
	v, err := kernelversion.ParseSemver(s)
	if err != nil {
		t.Fatal(err)
	}
	return &v
}

func TestEvaluate(t *testing.T) {
	issues, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*Issue{}
	for i := range issues {
		byID[issues[i].ID] = &issues[i]
	}
	eks := facts("5.10.219-208.866.amzn2.x86_64", "amd64", "amzn", "2", "Absent")
	graviton := facts("5.10.186-179.751.amzn2.aarch64", "arm64", "amzn", "2", "Absent")
	for _, tc := range []struct {
		name   string
		id     string
		f      v1alpha1.ProbeFacts
		sensor v1alpha1.SensorKind
		falco  string
		want   Applicability
	}{
		{"3286 on EKS with 0.38.1", "falco#3286", eks, v1alpha1.SensorFalco, "0.38.1", Applies},
		{"3286 on EKS with 0.38.2", "falco#3286", eks, v1alpha1.SensorFalco, "0.38.2", DoesNotApply},
		{"3286 on EKS with unknown Falco", "falco#3286", eks, v1alpha1.SensorFalco, "", MayApply},
		{"3286 does not apply to Builtin", "falco#3286", eks, v1alpha1.SensorBuiltin, "", DoesNotApply},
		{"3286 with overlay in vmlinux", "falco#3286", facts("6.1.94-99.176.amzn2023.x86_64", "amd64", "amzn", "2023", "Vmlinux"), v1alpha1.SensorFalco, "0.38.1", DoesNotApply},
		{"3286 with overlay types unknown", "falco#3286", facts("5.10.219-208.866.amzn2.x86_64", "amd64", "amzn", "2", ""), v1alpha1.SensorFalco, "0.38.1", MayApply},
		{"2795 on Graviton with 0.35.1", "falco#2795", graviton, v1alpha1.SensorFalco, "0.35.1", Applies},
		{"2795 on Graviton with 0.36.0", "falco#2795", graviton, v1alpha1.SensorFalco, "0.36.0", DoesNotApply},
		{"2795 on amd64", "falco#2795", eks, v1alpha1.SensorFalco, "0.35.1", DoesNotApply},
		{"3276 on RHEL 9.4", "falco#3276", facts("5.14.0-427.13.1.el9_4.x86_64", "amd64", "rhel", "9.4", "Module"), v1alpha1.SensorFalco, "0.38.1", Applies},
		{"3276 on RHEL 9.3", "falco#3276", facts("5.14.0-362.24.1.el9_3.x86_64", "amd64", "rhel", "9.3", "Module"), v1alpha1.SensorFalco, "0.38.1", DoesNotApply},
		{"2150 on 6.11.4", "libs#2150", facts("6.11.4-arch1", "amd64", "arch", "", "Module"), v1alpha1.SensorFalco, "0.39.1", Applies},
		{"2150 on 6.11.3", "libs#2150", facts("6.11.3-arch1", "amd64", "arch", "", "Module"), v1alpha1.SensorFalco, "0.39.1", DoesNotApply},
		{"2150 on 6.6.57", "libs#2150", facts("6.6.57-gardenlinux", "amd64", "gardenlinux", "", "Module"), v1alpha1.SensorFalco, "0.39.1", Applies},
		{"2150 on 6.18 fixed Falco", "libs#2150", facts("6.18.44-fc-v657", "amd64", "debian", "12", "Vmlinux"), v1alpha1.SensorFalco, "0.39.2", DoesNotApply},
		{"2118 on COS 117", "libs#2118", facts("6.6.44+", "amd64", "cos", "117", "Vmlinux"), v1alpha1.SensorFalco, "0.39.1", Applies},
		{"2118 on COS 113", "libs#2118", facts("6.1.90+", "amd64", "cos", "113", "Vmlinux"), v1alpha1.SensorFalco, "0.39.1", DoesNotApply},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fv *kernelversion.Version
			if tc.falco != "" {
				fv = semver(t, tc.falco)
			}
			ev := byID[tc.id].Evaluate(tc.f, tc.sensor, fv)
			if ev.Applicability != tc.want {
				t.Fatalf("Evaluate = %+v, want %v", ev, tc.want)
			}
			if tc.want == MayApply && len(ev.Unknown) == 0 {
				t.Errorf("MayApply without naming the unknown fact")
			}
			if tc.want == Applies && len(ev.Matched) == 0 {
				t.Errorf("Applies without naming the facts")
			}
		})
	}
}
