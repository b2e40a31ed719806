//go:build !matrixguest

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/controllers"
	"github.com/driverpilot/driverpilot/internal/scheme"
)

// TestFleetExportLoads exports a profile's FleetGroups as `driverpilot fleet-export
// --with-embedded` does and loads the file with the manager's --known-issues loader: the
// embedded entries and the learned one come back, and the learned one applies to its group.
func TestFleetExportLoads(t *testing.T) {
	g := &v1alpha1.FleetGroup{
		ObjectMeta: metav1.ObjectMeta{Name: "prod-0123456789", Labels: map[string]string{controllers.ProfileLabel: "prod"}},
		Spec:       v1alpha1.FleetGroupSpec{Profile: "prod", KernelRelease: "6.8.0-1021-aws", Architecture: "arm64", Distro: "ubuntu 22.04", Sensor: "Builtin 0.2.0"},
		Status: v1alpha1.FleetGroupStatus{Nodes: 12, Drivers: []v1alpha1.FleetDriverStatus{
			{Driver: v1alpha1.DriverModernEBPF, Verdict: v1alpha1.FleetFails, Failed: 2, LearnedFrom: "node a attempt 1", Reason: "SensorLoadFailed: verifier"},
			{Driver: v1alpha1.DriverEBPF, Verdict: v1alpha1.FleetWorks, Passed: 12},
		}},
	}
	other := g.DeepCopy()
	other.Name, other.Labels[controllers.ProfileLabel], other.Spec.Profile = "dev-0123456789", "dev", "dev"
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(g, other).Build()
	var out bytes.Buffer
	if err := exportFleet(context.Background(), c, "prod", knownissues.FleetReference, true, &out); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "known-issues.yaml")
	if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	issues, err := knownissues.LoadFile(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	embedded, err := knownissues.Default()
	if err != nil {
		t.Fatal(err)
	}
	if len(issues) != len(embedded)+1 {
		t.Fatalf("%d issues, want the %d embedded and 1 learned:\n%s", len(issues), len(embedded), out.String())
	}
	learned := issues[len(issues)-1]
	if learned.ID != "fleet-prod#1" || learned.Drivers[0] != v1alpha1.DriverModernEBPF {
		t.Fatalf("learned entry %+v", learned)
	}
	var f v1alpha1.ProbeFacts
	f.Kernel.Release.Value, f.Kernel.Architecture.Value, f.Distro.ID, f.Distro.VersionID = "6.8.0-1021-aws", "arm64", "ubuntu", "22.04"
	if a := learned.Evaluate(f, v1alpha1.SensorBuiltin, nil).Applicability; a != knownissues.Applies {
		t.Errorf("learned entry does not apply to its own group: %v", a)
	}
}
