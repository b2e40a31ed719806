package knownissues

import (
	"strings"
	"testing"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
)

// TestFleetExportRoundTrip exports a fleet matrix, loads it back with the loader the manager
// uses, and checks that each entry applies exactly to the group it was learned on.
func TestFleetExportRoundTrip(t *testing.T) {
	group := func(name, release, arch, distro, sensor string, cells ...v1alpha1.FleetDriverStatus) v1alpha1.FleetGroup {
		g := v1alpha1.FleetGroup{Spec: v1alpha1.FleetGroupSpec{Profile: "prod", KernelRelease: release, Architecture: arch, Distro: distro, Sensor: sensor},
			Status: v1alpha1.FleetGroupStatus{Nodes: 50, Drivers: cells}}
		g.Name = name
		return g
	}
	fails := v1alpha1.FleetDriverStatus{Driver: v1alpha1.DriverModernEBPF, Verdict: v1alpha1.FleetFails, Failed: 2,
		LearnedFrom: "node ip-10-0-1-7 attempt 1", Reason: "CheckFailed: ExeUpperLayer: reported lower layer"}
	works := v1alpha1.FleetDriverStatus{Driver: v1alpha1.DriverEBPF, Verdict: v1alpha1.FleetWorks, Passed: 50}
	groups := []v1alpha1.FleetGroup{
		group("prod-b", "5.10.219-208.866.amzn2.x86_64", "amd64", "amzn 2", "Falco 0.38.1", fails, works),
		group("prod-a", "6.1.0-28-cloud-amd64", "amd64", "debian 12", "Builtin 0.2.0", fails),
		group("prod-c", "6.8.0-1021-aws", "arm64", "ubuntu 22.04", "Falco 0.38.1", works),
		group("other-a", "6.1.0-28-cloud-amd64", "amd64", "debian 12", "Falco 0.38.1", fails),
	}
	groups[3].Spec.Profile = "other" // another profile's matrix
	f, err := FromFleet("prod", groups, "")
	if err != nil {
		t.Fatal(err)
	}
	data, err := Marshal(f, "exported by a test\nfrom profile prod")
	if err != nil {
		t.Fatal(err)
	}
	issues, err := Parse(data)
	if err != nil {
		t.Fatalf("the loader refuses the export: %v\n%s", err, data)
	}
	if len(issues) != 2 || issues[0].ID != "fleet-prod#1" || issues[1].ID != "fleet-prod#2" {
		t.Fatalf("issues %+v\n%s", issues, data)
	}
	if !strings.HasPrefix(string(data), "# exported by a test\n# from profile prod\n") {
		t.Errorf("header missing:\n%s", data)
	}

	facts := func(release, arch, distro, version string) v1alpha1.ProbeFacts {
		var p v1alpha1.ProbeFacts
		p.Kernel.Release.Value, p.Kernel.Architecture.Value = release, arch
		p.Distro.ID, p.Distro.VersionID = distro, version
		return p
	}
	v := func(s string) *kernelversion.Version {
		x, err := kernelversion.ParseSemver(s)
		if err != nil {
			t.Fatal(err)
		}
		return &x
	}
	builtin, falco := issues[0], issues[1] // prod-a sorts first
	for _, tc := range []struct {
		name   string
		issue  Issue
		facts  v1alpha1.ProbeFacts
		sensor v1alpha1.SensorKind
		falco  *kernelversion.Version
		want   Applicability
	}{
		{"Builtin entry on its group", builtin, facts("6.1.0-28-cloud-amd64", "amd64", "debian", "12"), v1alpha1.SensorBuiltin, nil, Applies},
		{"Builtin entry on a neighbouring kernel build", builtin, facts("6.1.0-28-cloud-amd64-dbg", "amd64", "debian", "12"), v1alpha1.SensorBuiltin, nil, DoesNotApply},
		{"Builtin entry for Falco", builtin, facts("6.1.0-28-cloud-amd64", "amd64", "debian", "12"), v1alpha1.SensorFalco, v("0.38.1"), DoesNotApply},
		{"Falco entry on its group and version", falco, facts("5.10.219-208.866.amzn2.x86_64", "amd64", "amzn", "2"), v1alpha1.SensorFalco, v("0.38.1"), Applies},
		{"Falco entry after an upgrade", falco, facts("5.10.219-208.866.amzn2.x86_64", "amd64", "amzn", "2"), v1alpha1.SensorFalco, v("0.38.2"), DoesNotApply},
		{"Falco entry on another architecture", falco, facts("5.10.219-208.866.amzn2.x86_64", "arm64", "amzn", "2"), v1alpha1.SensorFalco, v("0.38.1"), DoesNotApply},
		{"Falco entry with the distro unknown", falco, facts("5.10.219-208.866.amzn2.x86_64", "amd64", "", ""), v1alpha1.SensorFalco, v("0.38.1"), MayApply},
	} {
		if got := tc.issue.Evaluate(tc.facts, tc.sensor, tc.falco).Applicability; got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if !strings.Contains(falco.Effect, "node ip-10-0-1-7 attempt 1") || falco.Drivers[0] != v1alpha1.DriverModernEBPF {
		t.Errorf("falco entry %+v", falco)
	}
}
