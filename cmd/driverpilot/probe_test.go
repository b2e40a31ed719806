package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/selection"
)

func TestProbeFlagErrors(t *testing.T) {
	for _, args := range [][]string{{"-o", "xml"}, {"--no-such-flag"}, {"extra"}, {"--falco-version", "latest"}} {
		if err := runProbe(args); !errors.Is(err, errUsage) {
			t.Errorf("runProbe(%q) = %v, want errUsage", args, err)
		}
	}
}

func TestLoadProfile(t *testing.T) {
	spec, err := loadProfile("")
	if err != nil {
		t.Fatal(err)
	}
	if spec.Sensor.Kind != v1alpha1.SensorBuiltin || !slices.Equal(spec.Drivers.Preference, selection.DefaultPreference) {
		t.Errorf("default profile = %+v", spec)
	}

	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte(`apiVersion: security.driverpilot.io/v1alpha1
kind: SecurityProfile
metadata: {name: falco}
spec:
  sensor: {kind: Falco, image: "falcosecurity/falco:0.38.1"}
  drivers:
    overrides:
    - match: {kernelRelease: '^5\.10\..*amzn2'}
      preference: [ebpf]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err = loadProfile(good)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Sensor.Kind != v1alpha1.SensorFalco || len(spec.Drivers.Preference) != 3 || len(spec.Drivers.Overrides) != 1 {
		t.Errorf("profile = %+v", spec)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("kind: SecurityProfile\nspec:\n  drivers:\n    overrides:\n    - match: {kernelRelease: '('}\n      preference: [kmod]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadProfile(bad); !errors.Is(err, selection.ErrInvalidPolicy) {
		t.Errorf("bad regexp: %v, want ErrInvalidPolicy", err)
	}
}

func TestExplainGivesEveryDriverAVerdict(t *testing.T) {
	d := selection.Decision{
		Driver: v1alpha1.DriverKmod, Candidates: []v1alpha1.Driver{v1alpha1.DriverKmod, v1alpha1.DriverModernEBPF},
		Preference: []v1alpha1.Driver{v1alpha1.DriverKmod, v1alpha1.DriverModernEBPF},
		Reasons:    []v1alpha1.DriverReason{{Driver: v1alpha1.DriverEBPF, Source: v1alpha1.ReasonSourceProfile, Rule: "not-in-preference", Message: "not allowed"}},
	}
	got := explain(d)
	want := map[v1alpha1.Driver]string{v1alpha1.DriverKmod: "chosen", v1alpha1.DriverModernEBPF: "fallback", v1alpha1.DriverEBPF: "skipped"}
	if len(got) != 3 {
		t.Fatalf("%d verdicts, want 3", len(got))
	}
	for _, v := range got {
		if v.Verdict != want[v.Driver] || len(v.Why) == 0 {
			t.Errorf("%s: verdict %q why %q, want %q with a reason", v.Driver, v.Verdict, v.Why, want[v.Driver])
		}
	}
}

// A tree without sys/kernel/security (older or minimal kernels) is probed, lockdown unknown:
// the probe used to exit 1 when it could not mount securityfs there.
func TestProbeWithoutSecurityfs(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "sys", "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := runProbe([]string{"--root", root, "--mount-securityfs=true", "-o", "json"}); err != nil {
		t.Fatalf("probe of a tree without sys/kernel/security: %v", err)
	}
}
