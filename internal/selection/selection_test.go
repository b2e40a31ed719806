package selection

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
)

const (
	modern = v1alpha1.DriverModernEBPF
	ebpf   = v1alpha1.DriverEBPF
	kmod   = v1alpha1.DriverKmod
)

var (
	yes     = v1alpha1.BoolFact{Answer: v1alpha1.AnswerYes, Source: "test"}
	no      = v1alpha1.BoolFact{Answer: v1alpha1.AnswerNo, Source: "test"}
	unknown = v1alpha1.BoolFact{Answer: v1alpha1.AnswerUnknown, Error: "not measured"}
)

// node builds the facts of a healthy node; options change what a situation needs.
func node(release, arch, distro, distroVersion, cloud string, opts ...func(*v1alpha1.ProbeFacts)) v1alpha1.ProbeFacts {
	var f v1alpha1.ProbeFacts
	f.Kernel.Release.Value = release
	if v, err := kernelversion.ParseRelease(release); err == nil {
		f.Kernel.Version.Value = v.String()
	}
	f.Kernel.Architecture.Value = arch
	f.BTF.Vmlinux = yes
	f.BTF.OverlayTypes.Value = v1alpha1.OverlayTypesModule
	f.EBPF = v1alpha1.EBPFFacts{TPBTF: yes, RawTracepoint: yes, RingBuffer: yes}
	f.Lockdown.Value = "none"
	f.Modules = v1alpha1.ModuleFacts{Supported: yes, Disabled: no}
	f.SecureBoot = no
	f.Overlayfs = yes
	f.Distro = v1alpha1.DistroFacts{ID: distro, VersionID: distroVersion}
	f.Cloud.Value = cloud
	for _, o := range opts {
		o(&f)
	}
	return f
}

func overlay(where string) func(*v1alpha1.ProbeFacts) {
	return func(f *v1alpha1.ProbeFacts) { f.BTF.OverlayTypes = v1alpha1.StringFact{Value: where} }
}

func lockdown(mode string) func(*v1alpha1.ProbeFacts) {
	return func(f *v1alpha1.ProbeFacts) {
		f.Lockdown = v1alpha1.StringFact{Value: mode}
		if mode == "" {
			f.Lockdown.Error = "securityfs not mounted"
		}
	}
}

// memlock sets the BPF memory limit fact; "" is a failed measurement.
func memlock(value string) func(*v1alpha1.ProbeFacts) {
	return func(f *v1alpha1.ProbeFacts) {
		f.EBPF.Memlock = &v1alpha1.StringFact{Value: value, Source: "test"}
		if value == "" {
			f.EBPF.Memlock = &v1alpha1.StringFact{Error: "create a BPF map: operation not permitted"}
		}
	}
}

// boundingSet sets the host's capability bounding set; "" is a failed read.
func boundingSet(hex string) func(*v1alpha1.ProbeFacts) {
	return func(f *v1alpha1.ProbeFacts) {
		f.BoundingSet = &v1alpha1.StringFact{Value: hex, Source: "test"}
		if hex == "" {
			f.BoundingSet = &v1alpha1.StringFact{Error: "permission denied"}
		}
	}
}

var (
	eks = func(opts ...func(*v1alpha1.ProbeFacts)) v1alpha1.ProbeFacts {
		// Amazon Linux 2 5.10: overlay is a module and module BTF only exists from 5.11.
		return node("5.10.219-208.866.amzn2.x86_64", "amd64", "amzn", "2", "aws", append([]func(*v1alpha1.ProbeFacts){overlay(v1alpha1.OverlayTypesAbsent)}, opts...)...)
	}
	al2023    = node("6.1.94-99.176.amzn2023.x86_64", "amd64", "amzn", "2023", "aws")
	thisHost  = node("6.18.44-fc-v657", "amd64", "debian", "12", "", overlay(v1alpha1.OverlayTypesVmlinux), lockdown("integrity"), func(f *v1alpha1.ProbeFacts) { f.Modules = v1alpha1.ModuleFacts{Supported: no, Disabled: unknown} })
	rhel94    = node("5.14.0-427.13.1.el9_4.x86_64", "amd64", "rhel", "9.4", "")
	graviton  = node("5.10.186-179.751.amzn2.aarch64", "arm64", "amzn", "2", "aws", overlay(v1alpha1.OverlayTypesAbsent))
	falcoOnly = func(v string) v1alpha1.SensorSpec {
		return v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falcosecurity/falco:" + v}
	}
	builtin = v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin}
)

func prefer(ds ...v1alpha1.Driver) v1alpha1.DriverPolicy {
	return v1alpha1.DriverPolicy{Preference: ds}
}

func TestDecideSituations(t *testing.T) {
	issues, err := knownissues.Default()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		facts      v1alpha1.ProbeFacts
		policy     v1alpha1.DriverPolicy
		sensor     v1alpha1.SensorSpec
		failed     []v1alpha1.FailedAttempt
		candidates []v1alpha1.Driver
		// reasons are driver:rule, in the order the decision lists them.
		reasons []string
	}{
		{
			name:  "EKS AL2 5.10.219, Falco 0.38.1: falco#3286 rules out modern_ebpf",
			facts: eks(), sensor: falcoOnly("0.38.1"),
			candidates: []v1alpha1.Driver{ebpf, kmod},
			reasons:    []string{"modern_ebpf:falco#3286"},
		},
		{
			name:  "EKS AL2 5.10.219, Falco 0.38.2: fixed, modern_ebpf first",
			facts: eks(), sensor: falcoOnly("0.38.2"),
			candidates: []v1alpha1.Driver{modern, ebpf, kmod},
		},
		{
			name:  "EKS AL2 5.10.219, Builtin sensor: Falco issues do not apply, no kmod",
			facts: eks(), sensor: builtin,
			candidates: []v1alpha1.Driver{modern, ebpf},
			reasons:    []string{"kmod:builtin-sensor-no-kmod"},
		},
		{
			name:  "EKS AL2 5.10.219, Builtin sensor without CAP_SYS_RESOURCE: memlock rules out both eBPF drivers",
			facts: eks(memlock(v1alpha1.MemlockLimited)), sensor: builtin,
			reasons: []string{"modern_ebpf:memlock-blocks-builtin-ebpf", "ebpf:memlock-blocks-builtin-ebpf", "kmod:builtin-sensor-no-kmod"},
		},
		{
			name:  "EKS AL2 5.10.219, Builtin sensor, memlock raised to unlimited",
			facts: eks(memlock(v1alpha1.MemlockUnlimited)), sensor: builtin,
			candidates: []v1alpha1.Driver{modern, ebpf},
			reasons:    []string{"kmod:builtin-sensor-no-kmod"},
		},
		{
			name:  "EKS AL2 5.10.219, Falco 0.38.2: the agent's memlock limit is not Falco's (its container keeps SYS_RESOURCE)",
			facts: eks(memlock(v1alpha1.MemlockLimited)), sensor: falcoOnly("0.38.2"),
			candidates: []v1alpha1.Driver{modern, ebpf, kmod},
		},
		{
			name:  "Builtin sensor, memlock not measured: ranked lower, not ruled out",
			facts: node("5.10.219", "amd64", "debian", "11", "", memlock("")), sensor: builtin,
			candidates: []v1alpha1.Driver{modern, ebpf},
			reasons:    []string{"modern_ebpf:memlock-blocks-builtin-ebpf", "ebpf:memlock-blocks-builtin-ebpf", "kmod:builtin-sensor-no-kmod"},
		},
		{
			name:  "host without SYS_RESOURCE in its bounding set, Falco 0.40.0: libpman may not raise memlock, modern_ebpf ranked last",
			facts: node("6.18.44", "amd64", "debian", "12", "", boundingSet("000001fffeffffff")), sensor: falcoOnly("0.40.0"),
			candidates: []v1alpha1.Driver{ebpf, kmod, modern},
			reasons:    []string{"modern_ebpf:no-sys-resource-ranks-falco-modern-ebpf-lower"},
		},
		{
			name:  "host with SYS_RESOURCE in its bounding set, Falco 0.40.0",
			facts: node("6.18.44", "amd64", "debian", "12", "", boundingSet("000001ffffffffff")), sensor: falcoOnly("0.40.0"),
			candidates: []v1alpha1.Driver{modern, ebpf, kmod},
		},
		{
			name:  "host without SYS_RESOURCE, Builtin sensor: the agent does not add it",
			facts: node("6.18.44", "amd64", "debian", "12", "", boundingSet("000001fffeffffff")), sensor: builtin,
			candidates: []v1alpha1.Driver{modern, ebpf},
			reasons:    []string{"kmod:builtin-sensor-no-kmod"},
		},
		{
			name:  "bounding set unknown, Falco 0.40.0: modern_ebpf ranked last",
			facts: node("6.18.44", "amd64", "debian", "12", "", boundingSet("")), sensor: falcoOnly("0.40.0"),
			candidates: []v1alpha1.Driver{ebpf, kmod, modern},
			reasons:    []string{"modern_ebpf:no-sys-resource-ranks-falco-modern-ebpf-lower"},
		},
		{
			name:  "Bottlerocket, lockdown integrity",
			facts: node("6.1.90", "amd64", "bottlerocket", "1.20.0", "aws", lockdown("integrity")), sensor: falcoOnly("0.39.2"),
			candidates: []v1alpha1.Driver{modern, ebpf},
			reasons:    []string{"kmod:lockdown-blocks-kmod"},
		},
		{
			name:  "Container-Optimized OS 113",
			facts: node("6.1.90+", "amd64", "cos", "113", "gce", overlay(v1alpha1.OverlayTypesVmlinux)), sensor: falcoOnly("0.39.1"),
			candidates: []v1alpha1.Driver{modern, ebpf},
			reasons:    []string{"kmod:cos-blocks-kmod"},
		},
		{
			name:  "Container-Optimized OS 117, Falco 0.39.1: libs#2118",
			facts: node("6.6.44+", "amd64", "cos", "117", "gce", overlay(v1alpha1.OverlayTypesVmlinux)), sensor: falcoOnly("0.39.1"),
			candidates: []v1alpha1.Driver{ebpf},
			reasons:    []string{"modern_ebpf:libs#2118", "kmod:cos-blocks-kmod"},
		},
		{
			name:  "AL2023 6.1, Falco 0.40.0: everything works",
			facts: al2023, sensor: falcoOnly("0.40.0"),
			candidates: []v1alpha1.Driver{modern, ebpf, kmod},
		},
		{
			name:  "AKS Ubuntu 22.04 5.15 azure kernel, Falco 0.37.1: overlay module BTF present",
			facts: node("5.15.0-1052-azure", "amd64", "ubuntu", "22.04", "azure"), sensor: falcoOnly("0.37.1"),
			candidates: []v1alpha1.Driver{modern, ebpf, kmod},
		},
		{
			name:  "RHEL 9.4 5.14.0-427, kmod preferred, Falco 0.38.1: falco#3276",
			facts: rhel94, policy: prefer(kmod, modern), sensor: falcoOnly("0.38.1"),
			candidates: []v1alpha1.Driver{modern},
			reasons:    []string{"ebpf:not-in-preference", "kmod:falco#3276"},
		},
		{
			name:  "RHEL 9.4 5.14.0-427, kmod preferred, Falco 0.38.2: kmod first",
			facts: rhel94, policy: prefer(kmod, modern), sensor: falcoOnly("0.38.2"),
			candidates: []v1alpha1.Driver{kmod, modern},
			reasons:    []string{"ebpf:not-in-preference"},
		},
		{
			name: "Talos, lockdown confidentiality: no driver left",
			facts: node("6.6.30-talos", "amd64", "talos", "v1.7.6", "", overlay(v1alpha1.OverlayTypesVmlinux), lockdown("confidentiality"),
				func(f *v1alpha1.ProbeFacts) { f.Modules.Disabled = yes }),
			sensor:     falcoOnly("0.39.2"),
			candidates: []v1alpha1.Driver{},
			reasons: []string{"modern_ebpf:lockdown-confidentiality-blocks-ebpf", "ebpf:lockdown-confidentiality-blocks-ebpf",
				"kmod:lockdown-blocks-kmod", "kmod:modules-disabled-blocks-kmod"},
		},
		{
			name:  "Graviton arm64 5.10 amzn2, Falco 0.35.1: falco#3286 and falco#2795",
			facts: graviton, sensor: falcoOnly("0.35.1"),
			candidates: []v1alpha1.Driver{ebpf, kmod},
			reasons:    []string{"modern_ebpf:falco#3286", "modern_ebpf:falco#2795"},
		},
		{
			name:  "Falco 0.44.0 with ebpf preferred: ebpf no longer exists",
			facts: al2023, policy: prefer(ebpf, modern, kmod), sensor: falcoOnly("0.44.0"),
			candidates: []v1alpha1.Driver{modern, kmod},
			reasons:    []string{"ebpf:falco-0.44-removed-ebpf"},
		},
		{
			name: "no BTF at all (Ubuntu 18.04 4.15): modern_ebpf impossible",
			facts: node("4.15.0-213-generic", "amd64", "ubuntu", "18.04", "", overlay(v1alpha1.OverlayTypesAbsent), func(f *v1alpha1.ProbeFacts) {
				f.BTF.Vmlinux = no
				f.EBPF.TPBTF = v1alpha1.BoolFact{Answer: v1alpha1.AnswerNo, Error: "load tp_btf program: invalid argument"}
				f.EBPF.RingBuffer = v1alpha1.BoolFact{Answer: v1alpha1.AnswerNo, Error: "create ring buffer: invalid argument"}
			}),
			sensor:     falcoOnly("0.38.2"),
			candidates: []v1alpha1.Driver{ebpf, kmod},
			reasons: []string{"modern_ebpf:no-btf-blocks-modern-ebpf", "modern_ebpf:tp-btf-failed-blocks-modern-ebpf",
				"modern_ebpf:ringbuf-failed-blocks-modern-ebpf"},
		},
		{
			name:  "this machine (6.18, lockdown integrity, no modules), Builtin",
			facts: thisHost, sensor: builtin,
			candidates: []v1alpha1.Driver{modern, ebpf},
			reasons:    []string{"kmod:builtin-sensor-no-kmod"},
		},
		{
			name:  "this machine with Falco 0.44.0",
			facts: thisHost, sensor: falcoOnly("0.44.0"),
			candidates: []v1alpha1.Driver{modern},
			reasons:    []string{"ebpf:falco-0.44-removed-ebpf", "kmod:lockdown-blocks-kmod", "kmod:no-module-support-blocks-kmod"},
		},
		{
			name:  "Oracle Linux 9 UEK",
			facts: node("5.15.0-208.159.3.2.el9uek.x86_64", "amd64", "ol", "9.4", "oci"), sensor: falcoOnly("0.39.2"),
			candidates: []v1alpha1.Driver{modern, ebpf},
			reasons:    []string{"kmod:oracle-uek-blocks-kmod"},
		},
		{
			name:       "Ubuntu with Secure Boot (lockdown integrity follows)",
			facts:      node("6.8.0-1012-gcp", "amd64", "ubuntu", "24.04", "gce", lockdown("integrity"), func(f *v1alpha1.ProbeFacts) { f.SecureBoot = yes }),
			sensor:     falcoOnly("0.39.2"),
			candidates: []v1alpha1.Driver{modern, ebpf},
			reasons:    []string{"kmod:lockdown-blocks-kmod", "kmod:secure-boot-blocks-kmod"},
		},
		{
			name:   "modules_disabled=1 on Flatcar",
			facts:  node("6.6.54-flatcar", "amd64", "flatcar", "3975.2.2", "", func(f *v1alpha1.ProbeFacts) { f.Modules.Disabled = yes }),
			policy: prefer(kmod, ebpf), sensor: falcoOnly("0.39.2"),
			candidates: []v1alpha1.Driver{ebpf},
			reasons:    []string{"modern_ebpf:not-in-preference", "kmod:modules-disabled-blocks-kmod"},
		},
		{
			name: "Secure Boot unknown, kmod preferred: kmod ranked after modern_ebpf, still a candidate",
			facts: node("6.1.0-56-cloud-amd64", "amd64", "debian", "12", "", overlay(v1alpha1.OverlayTypesVmlinux),
				func(f *v1alpha1.ProbeFacts) { f.SecureBoot = unknown }),
			policy: prefer(kmod, modern), sensor: falcoOnly("0.39.2"),
			candidates: []v1alpha1.Driver{modern, kmod},
			reasons:    []string{"ebpf:not-in-preference", "kmod:secure-boot-blocks-kmod"},
		},
		{
			name:   "lockdown unknown (securityfs unmounted): every driver in doubt, preference order kept",
			facts:  node("6.1.0-56-cloud-amd64", "amd64", "debian", "12", "", overlay(v1alpha1.OverlayTypesVmlinux), lockdown("")),
			policy: prefer(kmod, modern), sensor: falcoOnly("0.39.2"),
			candidates: []v1alpha1.Driver{kmod, modern},
			reasons:    []string{"modern_ebpf:lockdown-confidentiality-blocks-ebpf", "ebpf:not-in-preference", "kmod:lockdown-blocks-kmod"},
		},
		{
			name:  "override for amzn2 5.10 kernels: ebpf only",
			facts: eks(), sensor: falcoOnly("0.38.2"),
			policy: v1alpha1.DriverPolicy{Preference: []v1alpha1.Driver{modern, ebpf, kmod}, Overrides: []v1alpha1.DriverOverride{
				{Match: v1alpha1.OverrideMatch{Distro: []string{"cos"}}, Preference: []v1alpha1.Driver{modern}},
				{Match: v1alpha1.OverrideMatch{KernelRelease: `^5\.10\..*amzn2`, CloudProvider: []string{"aws"}}, Preference: []v1alpha1.Driver{ebpf}},
			}},
			candidates: []v1alpha1.Driver{ebpf},
			reasons:    []string{"modern_ebpf:not-in-override-preference", "kmod:not-in-override-preference"},
		},
		{
			name:  "failed self-test with modern_ebpf falls back to ebpf",
			facts: al2023, sensor: falcoOnly("0.40.0"),
			failed:     []v1alpha1.FailedAttempt{{Driver: modern, Attempt: 1, Reason: "ExeUpperLayer: no event within 10s"}},
			candidates: []v1alpha1.Driver{ebpf, kmod},
			reasons:    []string{"modern_ebpf:self-test-failed"},
		},
		{
			name:  "Falco image without a version tag: ebpf may be gone, ranked last",
			facts: al2023, sensor: v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "registry.example.com/falco@sha256:0123"},
			candidates: []v1alpha1.Driver{modern, kmod, ebpf},
			reasons:    []string{"ebpf:falco-0.44-removed-ebpf"},
		},
		{
			name:  "Arch 6.11.5, Falco 0.39.1: libs#2150",
			facts: node("6.11.5-arch1-1", "amd64", "arch", "", ""), sensor: falcoOnly("0.39.1"),
			candidates: []v1alpha1.Driver{ebpf, kmod},
			reasons:    []string{"modern_ebpf:libs#2150"},
		},
		{
			name:       "overlay types unknown, Falco 0.38.1: falco#3286 may apply, modern_ebpf ranked last",
			facts:      eks(func(f *v1alpha1.ProbeFacts) { f.BTF.OverlayTypes = v1alpha1.StringFact{Error: "permission denied"} }),
			sensor:     falcoOnly("0.38.1"),
			candidates: []v1alpha1.Driver{ebpf, kmod, modern},
			reasons:    []string{"modern_ebpf:falco#3286"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Decide(Input{Facts: tc.facts, Policy: tc.policy, Sensor: tc.sensor, KnownIssues: issues, FailedAttempts: tc.failed})
			if err != nil {
				t.Fatal(err)
			}
			wantDriver := v1alpha1.Driver("")
			if len(tc.candidates) > 0 {
				wantDriver = tc.candidates[0]
			}
			if d.Driver != wantDriver {
				t.Errorf("driver = %q, want %q", d.Driver, wantDriver)
			}
			if !slices.Equal(d.Candidates, tc.candidates) {
				t.Errorf("candidates = %v, want %v", d.Candidates, tc.candidates)
			}
			var got []string
			for _, r := range d.Reasons {
				got = append(got, fmt.Sprintf("%s:%s", r.Driver, r.Rule))
				if r.Message == "" || r.Source == "" {
					t.Errorf("reason %+v lacks a message or source", r)
				}
			}
			if !slices.Equal(got, tc.reasons) {
				t.Errorf("reasons = %q, want %q", got, tc.reasons)
			}
			// Every driver that is not a candidate must carry at least one reason.
			for _, drv := range v1alpha1.AllDrivers {
				if !slices.Contains(d.Candidates, drv) && !slices.ContainsFunc(d.Reasons, func(r v1alpha1.DriverReason) bool { return r.Driver == drv }) {
					t.Errorf("%s skipped without a reason", drv)
				}
			}
		})
	}
}

func TestReasonsCiteFacts(t *testing.T) {
	issues, _ := knownissues.Default()
	d, err := Decide(Input{Facts: eks(), Sensor: falcoOnly("0.38.1"), KnownIssues: issues})
	if err != nil {
		t.Fatal(err)
	}
	r := d.Reasons[0]
	for _, want := range []string{"overlay types Absent", "Falco 0.38.1 < 0.38.2"} {
		if !strings.Contains(r.Message, want) {
			t.Errorf("message %q does not cite %q", r.Message, want)
		}
	}
	if r.Source != v1alpha1.ReasonSourceKnownIssue || r.Reference != "https://github.com/falcosecurity/falco/issues/3286" {
		t.Errorf("reason = %+v", r)
	}
}

func TestOverrideWithUnknownFactDoesNotMatch(t *testing.T) {
	f := al2023
	f.Cloud = v1alpha1.StringFact{Error: "no providerID"}
	d, err := Decide(Input{Facts: f, Sensor: builtin, Policy: v1alpha1.DriverPolicy{Overrides: []v1alpha1.DriverOverride{
		{Match: v1alpha1.OverrideMatch{CloudProvider: []string{"aws"}}, Preference: []v1alpha1.Driver{ebpf}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if d.Override != -1 || d.Driver != modern || len(d.Notes) != 1 || !strings.Contains(d.Notes[0], "cloud provider unknown") {
		t.Errorf("decision = %+v", d)
	}
}

func TestInvalidPolicy(t *testing.T) {
	for _, tc := range []struct {
		policy v1alpha1.DriverPolicy
		field  string
	}{
		{v1alpha1.DriverPolicy{Overrides: []v1alpha1.DriverOverride{
			{Match: v1alpha1.OverrideMatch{Distro: []string{"cos"}}, Preference: []v1alpha1.Driver{kmod}},
			{Match: v1alpha1.OverrideMatch{KernelRelease: `^5\.10\.(`}, Preference: []v1alpha1.Driver{ebpf}},
		}}, "drivers.overrides[1].match.kernelRelease"},
		{prefer(modern, "bpf"), "drivers.preference[1]"},
		{prefer(kmod, kmod), "drivers.preference[1]: duplicate"},
		{v1alpha1.DriverPolicy{Overrides: []v1alpha1.DriverOverride{{Preference: []v1alpha1.Driver{ebpf}}}}, "drivers.overrides[0].match"},
	} {
		err := ValidatePolicy(tc.policy)
		if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("ValidatePolicy = %v, want ErrInvalidPolicy naming %s", err, tc.field)
		}
		if _, err := Decide(Input{Facts: al2023, Policy: tc.policy}); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("Decide accepted an invalid policy: %v", err)
		}
	}
	if err := ValidatePolicy(prefer(modern, ebpf, kmod)); err != nil {
		t.Errorf("valid policy rejected: %v", err)
	}
}

func TestFalcoVersion(t *testing.T) {
	for _, tc := range []struct {
		spec v1alpha1.SensorSpec
		want string
	}{
		{v1alpha1.SensorSpec{FalcoVersion: "0.38.2"}, "0.38.2"},
		{v1alpha1.SensorSpec{FalcoVersion: "v0.39.0"}, "0.39.0"},
		{v1alpha1.SensorSpec{Image: "docker.io/falcosecurity/falco:0.38.2"}, "0.38.2"},
		{v1alpha1.SensorSpec{Image: "falcosecurity/falco-no-driver:0.37.1-debian"}, "0.37.1"},
		{v1alpha1.SensorSpec{Image: "localhost:5000/falco"}, ""},
		{v1alpha1.SensorSpec{Image: "falcosecurity/falco:latest"}, ""},
		{v1alpha1.SensorSpec{Image: "falcosecurity/falco:0.38.2@sha256:abcd"}, "0.38.2"},
		{v1alpha1.SensorSpec{Image: "falcosecurity/falco:0.44.0-rc1"}, "0.44.0-rc1"},
	} {
		v, ok := FalcoVersion(tc.spec)
		got := ""
		if ok {
			got = v.String()
		}
		if got != tc.want {
			t.Errorf("FalcoVersion(%+v) = %q, want %q", tc.spec, got, tc.want)
		}
	}
}

func TestReasonsCapped(t *testing.T) {
	// Every kmod rule fires, plus a failed attempt: the reasons stay within the API's 16.
	f := node("5.15.0-208.159.3.2.el9uek.x86_64", "amd64", "cos", "117", "", lockdown("confidentiality"), func(f *v1alpha1.ProbeFacts) {
		f.SecureBoot, f.Modules.Supported, f.Modules.Disabled = yes, no, yes
		f.BTF.Vmlinux, f.EBPF.TPBTF, f.EBPF.RingBuffer, f.EBPF.RawTracepoint = no, no, no, no
		f.BTF.OverlayTypes.Value = v1alpha1.OverlayTypesAbsent
	})
	var failed []v1alpha1.FailedAttempt
	for i, drv := range v1alpha1.AllDrivers {
		failed = append(failed, v1alpha1.FailedAttempt{Driver: drv, Attempt: int32(i + 1), Reason: "failed"})
	}
	issues, _ := knownissues.Default()
	d, err := Decide(Input{Facts: f, Sensor: falcoOnly("0.35.0"), KnownIssues: issues, FailedAttempts: failed})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Reasons) != maxReasons || len(d.Candidates) != 0 {
		t.Fatalf("%d reasons, candidates %v", len(d.Reasons), d.Candidates)
	}
	for _, drv := range v1alpha1.AllDrivers {
		if !slices.ContainsFunc(d.Reasons, func(r v1alpha1.DriverReason) bool { return r.Driver == drv }) {
			t.Errorf("cap dropped every reason of %s", drv)
		}
	}
}

// TestCapabilityReasonsSayWhy: the memlock and bounding-set reasons name the capability and the
// measured values, so a NoSupportedDriver condition explains itself.
func TestCapabilityReasonsSayWhy(t *testing.T) {
	for _, tc := range []struct {
		facts  v1alpha1.ProbeFacts
		sensor v1alpha1.SensorSpec
		want   []string
	}{
		{eks(memlock(v1alpha1.MemlockLimited)), builtin, []string{"RLIMIT_MEMLOCK", "SYS_RESOURCE", "memlock Limited (test)"}},
		{node("6.18.44", "amd64", "debian", "12", "", boundingSet("000001fffeffffff")), falcoOnly("0.40.0"),
			[]string{"ranked lower", "libpman", "000001fffeffffff", "lacks SYS_RESOURCE"}},
	} {
		d, err := Decide(Input{Facts: tc.facts, Sensor: tc.sensor, Policy: prefer(modern)})
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Reasons) == 0 {
			t.Fatalf("%s: no reason", tc.sensor.Kind)
		}
		for _, w := range tc.want {
			if !strings.Contains(d.Reasons[0].Message, w) {
				t.Errorf("%s: reason %q does not mention %q", tc.sensor.Kind, d.Reasons[0].Message, w)
			}
		}
	}
}

// TestUnknownSaysWhatWasObserved: a fact the agent never reported reads "not probed", a fact
// whose probe failed on the node says so with the error: two different things to fix.
func TestUnknownSaysWhatWasObserved(t *testing.T) {
	cases := []struct {
		name string
		set  func(*v1alpha1.ProbeFacts)
		want string
	}{
		{"not probed", func(f *v1alpha1.ProbeFacts) { f.Lockdown = v1alpha1.StringFact{} }, "lockdown unknown: not probed"},
		{"failed here", func(f *v1alpha1.ProbeFacts) { f.Lockdown = v1alpha1.StringFact{Error: "securityfs not mounted"} },
			"lockdown unknown: the probe failed on this node: securityfs not mounted"},
		{"bool not probed", func(f *v1alpha1.ProbeFacts) { f.Modules.Disabled = v1alpha1.BoolFact{} }, "unknown: not probed"},
	}
	for _, tc := range cases {
		f := node("6.1.0-28-cloud-amd64", "amd64", "debian", "12", "aws", tc.set)
		d, err := Decide(Input{Facts: f, Policy: prefer(v1alpha1.DriverKmod), Sensor: v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falco:0.42.1"}})
		if err != nil {
			t.Fatal(err)
		}
		var msgs []string
		for _, r := range d.Reasons {
			msgs = append(msgs, r.Message)
		}
		if !strings.Contains(strings.Join(msgs, "\n"), tc.want) {
			t.Errorf("%s: no reason says %q:\n%s", tc.name, tc.want, strings.Join(msgs, "\n"))
		}
	}
}
