package v1alpha1_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/simagent"
	"github.com/driverpilot/driverpilot/internal/testenv"
)

// The probe facts, the self-test verdict and the copied profile settings have one writer each
// and are written whole, so they are atomic: the API server tracks each as one managed field.
// Tracked leaf by leaf, the managed fields were half the stored NodeSensor (2.1 of 4.1 KB), and
// every write of a fleet paid for them (issue 13).
func TestNodeSensorManagedFieldsStayShallow(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	ns := &v1alpha1.NodeSensor{Spec: v1alpha1.NodeSensorSpec{
		Profile: "shallow", Driver: v1alpha1.DriverModernEBPF, Attempt: 1,
		Sensor:   v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin},
		SelfTest: v1alpha1.SelfTestSpec{Checks: []v1alpha1.CheckName{v1alpha1.CheckExeUpperLayer, v1alpha1.CheckExeLowerLayer}},
	}}
	ns.Name = "shallow-a"
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, ns) })
	// The agent's report: facts and verdict in one merge patch of the status.
	base := ns.DeepCopy()
	ns.Status.Probe = simagent.TypicalFacts("boot-1")
	ns.Status.SelfTest = simagent.Honest(ns.Spec, "boot-1", "v0", time.Now())
	now := metav1.Now()
	ns.Status.HeartbeatTime = &now
	if err := env.Client.Status().Patch(ctx, ns, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	got := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(ns), got); err != nil {
		t.Fatal(err)
	}
	if got.Status.Probe == nil || got.Status.Probe.Kernel.Release.Value == "" || got.Status.SelfTest == nil || len(got.Status.SelfTest.Checks) != 2 {
		t.Fatalf("the report did not arrive whole: %+v", got.Status)
	}
	leaves := map[string][]string{
		"spec.sensor": {"f:spec", "f:sensor"}, "spec.selfTest": {"f:spec", "f:selfTest"},
		"status.probe": {"f:status", "f:probe"}, "status.selfTest": {"f:status", "f:selfTest"},
	}
	for _, entry := range got.ManagedFields {
		var fields map[string]any
		if err := json.Unmarshal(entry.FieldsV1.Raw, &fields); err != nil {
			t.Fatal(err)
		}
		for what, path := range leaves {
			node, ok := walk(fields, path)
			if !ok {
				continue
			}
			if len(node) != 0 {
				t.Errorf("%s is tracked field by field (%d entries), want one atomic field", what, len(node))
			}
			delete(leaves, what)
		}
	}
	if len(leaves) != 0 {
		t.Errorf("managed fields name no owner for %v: %+v", leaves, got.ManagedFields)
	}
}

// walk follows path through a FieldsV1 tree.
func walk(fields map[string]any, path []string) (map[string]any, bool) {
	node := fields
	for _, p := range path {
		next, ok := node[p].(map[string]any)
		if !ok {
			return nil, false
		}
		node = next
	}
	return node, true
}
