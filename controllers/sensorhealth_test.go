package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
)

// sensorOf reads a node's NodeSensor.
func sensorOf(t *testing.T, node string) *v1alpha1.NodeSensor {
	t.Helper()
	ns := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: node}, ns); err != nil {
		t.Fatal(err)
	}
	return ns
}

// TestInconclusiveIsNotAFailedAttempt: an agent whose self-tests keep losing events reports
// Inconclusive; the API accepts it, the node stays pending on its first driver and the manager
// records no failed attempt against it (before the Inconclusive value the API refused the status).
func TestInconclusiveIsNotAFailedAttempt(t *testing.T) {
	createNodes(t, "inconclusive", "inconclusive-a")
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestInconclusive), "inconclusive-a")
	createProfile(t, profileFor("inconclusive", "inconclusive"))
	eventually(t, 20*time.Second, "inconclusive verdict stored", func() error {
		ns := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "inconclusive-a"}, ns); err != nil {
			return err
		}
		if st := ns.Status.SelfTest; st == nil || st.Result != v1alpha1.SelfTestInconclusive {
			return fmt.Errorf("self-test %+v, want Inconclusive", st)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // several passes of the manager
	ns := sensorOf(t, "inconclusive-a")
	if len(ns.Spec.FailedAttempts) != 0 || ns.Spec.Attempt != 1 {
		t.Errorf("inconclusive run recorded as a failure: attempt %d, failed attempts %+v", ns.Spec.Attempt, ns.Spec.FailedAttempts)
	}
	// Pending: no condition is written for a node that never had one.
	if c := nodeCondition(t, "inconclusive-a"); c != nil && c.Reason != controllers.ReasonPending {
		t.Errorf("condition %s/%s, want none or Pending", c.Status, c.Reason)
	}
}

// TestDeadSensorTakesNodeOutOfVerified: the agent reports SensorHealthy=False after its sensor
// died; the node leaves True (False, SensorUnhealthy, the agent's reason in the message) without
// a failed attempt, and comes back when the agent reports the condition True with a new pass.
func TestDeadSensorTakesNodeOutOfVerified(t *testing.T) {
	createNodes(t, "sensorhealth", "sensorhealth-a")
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "sensorhealth-a")
	createProfile(t, profileFor("sensorhealth", "sensorhealth"))
	eventually(t, 20*time.Second, "verified", conditionIs(t, "sensorhealth-a", corev1.ConditionTrue, controllers.ReasonVerified))

	setHealth := func(status metav1.ConditionStatus, reason string) {
		t.Helper()
		ns := sensorOf(t, "sensorhealth-a")
		base := ns.DeepCopy()
		meta.SetStatusCondition(&ns.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionSensorHealthy, Status: status,
			Reason: reason, Message: "reported by the test"})
		if err := env.Client.Status().Patch(context.Background(), ns, client.MergeFrom(base)); err != nil {
			t.Fatal(err)
		}
	}
	setHealth(metav1.ConditionFalse, "ReaderStopped")
	eventually(t, 10*time.Second, "sensor unhealthy", conditionIs(t, "sensorhealth-a", corev1.ConditionFalse, controllers.ReasonSensorUnhealthy))
	if c := nodeCondition(t, "sensorhealth-a"); c == nil || !strings.Contains(c.Message, "ReaderStopped") {
		t.Errorf("condition message does not carry the agent's reason: %+v", c)
	}
	if ns := sensorOf(t, "sensorhealth-a"); len(ns.Spec.FailedAttempts) != 0 || ns.Spec.Attempt != 1 {
		t.Errorf("a dead sensor was recorded as a failed attempt: attempt %d, %+v", ns.Spec.Attempt, ns.Spec.FailedAttempts)
	}
	setHealth(metav1.ConditionTrue, "SelfTestPassed")
	eventually(t, 10*time.Second, "verified again", conditionIs(t, "sensorhealth-a", corev1.ConditionTrue, controllers.ReasonVerified))
}
