package nodestate

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

func TestClassify(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	fresh := metav1.NewTime(now.Add(-10 * time.Second))
	stale := metav1.NewTime(now.Add(-10 * time.Minute))
	probe := &v1alpha1.ProbeFacts{Kernel: v1alpha1.KernelFacts{BootID: v1alpha1.StringFact{Value: "boot-2"}}}
	verdict := func(attempt int32, d v1alpha1.Driver, r v1alpha1.SelfTestResult, boot string) *v1alpha1.SelfTestStatus {
		return &v1alpha1.SelfTestStatus{Attempt: attempt, Driver: d, Result: r, BootID: boot}
	}
	unhealthy := []metav1.Condition{{Type: v1alpha1.ConditionSensorHealthy, Status: metav1.ConditionFalse, Reason: "ReaderStopped"}}
	healthy := []metav1.Condition{{Type: v1alpha1.ConditionSensorHealthy, Status: metav1.ConditionTrue, Reason: "SelfTestPassed"}}
	cases := []struct {
		name string
		spec v1alpha1.NodeSensorSpec
		st   v1alpha1.NodeSensorStatus
		want Phase
	}{
		{"no probe yet", v1alpha1.NodeSensorSpec{}, v1alpha1.NodeSensorStatus{}, AwaitingProbe},
		{"probed, no decision", v1alpha1.NodeSensorSpec{}, v1alpha1.NodeSensorStatus{Probe: probe, HeartbeatTime: &fresh}, Queued},
		{"decided nothing", v1alpha1.NodeSensorSpec{Attempt: 3}, v1alpha1.NodeSensorStatus{Probe: probe}, NoSupportedDriver},
		{"decided, no verdict", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 1}, v1alpha1.NodeSensorStatus{Probe: probe}, Verifying},
		{"re-verifying the driver that passed the previous attempt", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(1, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Reverifying},
		{"a new driver after another passed", v1alpha1.NodeSensorSpec{Driver: "kmod", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(1, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Verifying},
		{"a pass two attempts back proves nothing", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 3},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(1, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Verifying},
		{"a previous pass in an earlier boot proves nothing", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(1, "ebpf", v1alpha1.SelfTestPassed, "boot-1")}, Verifying},
		{"passed", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Verified},
		{"passed in an earlier boot", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-1")}, Verifying},
		{"failed", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestFailed, "boot-2")}, AttemptFailed},
		{"not applicable is no proof", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestNotApplicable, "boot-2")}, AttemptFailed},
		{"inconclusive (events dropped) is no proof and no failed attempt", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestInconclusive, "boot-2")}, Verifying},
		{"passed, then the sensor died", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2"), Conditions: unhealthy}, SensorUnhealthy},
		{"passed, sensor healthy", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2"), Conditions: healthy}, Verified},
		{"re-verifying on a proof whose sensor died", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 3},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2"), Conditions: unhealthy}, SensorUnhealthy},
		{"an unhealthy sensor does not hide a failure", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestFailed, "boot-2"), Conditions: unhealthy}, AttemptFailed},
		{"heartbeat expired", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, HeartbeatTime: &stale, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, HeartbeatExpired},
	}
	for _, tc := range cases {
		ns := &v1alpha1.NodeSensor{Spec: tc.spec, Status: tc.st}
		if got := Classify(ns, now, 2*time.Minute); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestRollup(t *testing.T) {
	counts, drivers := Rollup([]Node{
		{Name: "a", Phase: Verified, Driver: v1alpha1.DriverModernEBPF},
		{Name: "b", Phase: Verified, Driver: v1alpha1.DriverKmod},
		{Name: "c", Phase: Verified, Driver: v1alpha1.DriverModernEBPF},
		{Name: "d", Phase: NoSupportedDriver},
		{Name: "e", Phase: Verifying, Driver: v1alpha1.DriverEBPF},
		{Name: "f", Phase: HeartbeatExpired, Driver: v1alpha1.DriverEBPF},
		{Name: "g", Phase: SensorUnhealthy, Driver: v1alpha1.DriverEBPF},
	})
	want := v1alpha1.NodeCounts{Selected: 7, Verified: 3, Failed: 1, Pending: 3}
	if counts != want {
		t.Errorf("counts %+v, want %+v", counts, want)
	}
	if len(drivers) != 2 || drivers[0] != (v1alpha1.DriverCount{Driver: "modern_ebpf", Nodes: 2}) || drivers[1] != (v1alpha1.DriverCount{Driver: "kmod", Nodes: 1}) {
		t.Errorf("drivers %+v", drivers)
	}
}

func TestNeedsReverify(t *testing.T) {
	ns := func(running, proved string) *v1alpha1.NodeSensor {
		return &v1alpha1.NodeSensor{Status: v1alpha1.NodeSensorStatus{
			AgentVersion: running, SelfTest: &v1alpha1.SelfTestStatus{AgentVersion: proved, Result: v1alpha1.SelfTestPassed},
		}}
	}
	cases := []struct {
		running, proved, desired string
		want                     bool
	}{
		{"0.2.0", "0.1.0", "0.2.0", true},  // new agent runs, proof is old
		{"0.1.0", "0.1.0", "0.2.0", false}, // old agent still runs: wait for the DaemonSet
		{"0.2.0", "0.2.0", "0.2.0", false}, // already proven by the new agent
		{"0.2.0", "0.1.0", "", false},      // feature off
	}
	for _, c := range cases {
		if got := NeedsReverify(ns(c.running, c.proved), c.desired); got != c.want {
			t.Errorf("running %s proved %s desired %s: %v, want %v", c.running, c.proved, c.desired, got, c.want)
		}
	}
}

func TestStalledWhileVerifying(t *testing.T) {
	now := time.Now()
	stale := metav1.NewTime(now.Add(-time.Hour))
	probe := &v1alpha1.ProbeFacts{}
	verifying := &v1alpha1.NodeSensor{Spec: v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 1},
		Status: v1alpha1.NodeSensorStatus{Probe: probe, HeartbeatTime: &stale}}
	if !StalledWhileVerifying(verifying, now) {
		t.Error("a silent node with a driver and no verdict was verifying")
	}
	verified := verifying.DeepCopy()
	verified.Status.SelfTest = &v1alpha1.SelfTestStatus{Driver: "ebpf", Attempt: 1, Result: v1alpha1.SelfTestPassed}
	if StalledWhileVerifying(verified, now) {
		t.Error("a silent verified node was not verifying")
	}
}
