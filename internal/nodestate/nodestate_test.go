package nodestate

import (
	"strings"
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
		return &v1alpha1.SelfTestStatus{Attempt: attempt, Driver: d, Result: r, BootID: boot,
			Checks: []v1alpha1.CheckResult{{Name: v1alpha1.CheckExeUpperLayer, Result: r}}}
	}
	unhealthy := []metav1.Condition{{Type: v1alpha1.ConditionSensorHealthy, Status: metav1.ConditionFalse, Reason: "ReaderStopped"}}
	healthy := []metav1.Condition{{Type: v1alpha1.ConditionSensorHealthy, Status: metav1.ConditionTrue, Reason: "SelfTestPassed"}}
	withChecks := func(st *v1alpha1.SelfTestStatus, checks ...v1alpha1.CheckResult) *v1alpha1.SelfTestStatus {
		st.Checks = checks
		return st
	}
	passed := func(c v1alpha1.CheckName) v1alpha1.CheckResult {
		return v1alpha1.CheckResult{Name: c, Result: v1alpha1.SelfTestPassed}
	}
	both := v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2, SelfTest: v1alpha1.SelfTestSpec{
		Checks: []v1alpha1.CheckName{v1alpha1.CheckExeUpperLayer, v1alpha1.CheckExeLowerLayer}}}
	noBoot := &v1alpha1.ProbeFacts{}
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
		{"re-verifying the driver that passed the previous attempt", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2, ProvenAttempt: 1},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(1, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Reverifying},
		{"a previous pass the manager never saw proven keeps nothing", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(1, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Verifying},
		{"a pass for attempt 0, which never exists, keeps nothing", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 1},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(0, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Verifying},
		{"a new driver after another passed", v1alpha1.NodeSensorSpec{Driver: "kmod", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(1, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Verifying},
		{"a pass two attempts back proves nothing", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 3, ProvenAttempt: 1},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(1, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Verifying},
		{"a previous pass in an earlier boot proves nothing", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2, ProvenAttempt: 1},
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
		{"re-verifying on a proof whose sensor died", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 3, ProvenAttempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2"), Conditions: unhealthy}, SensorUnhealthy},
		{"an unhealthy sensor does not hide a failure", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestFailed, "boot-2"), Conditions: unhealthy}, AttemptFailed},
		// Trust: proof is every required check Passed, for this attempt, driver and boot.
		{"passed without any check", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: withChecks(verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2"))}, AttemptFailed},
		{"passed without a check the spec requires", both,
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, AttemptFailed},
		{"passed with a required check failed", both,
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: withChecks(verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2"),
				passed(v1alpha1.CheckExeUpperLayer), v1alpha1.CheckResult{Name: v1alpha1.CheckExeLowerLayer, Result: v1alpha1.SelfTestFailed})}, AttemptFailed},
		{"passed without ExeUpperLayer though the spec omits it", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2,
			SelfTest: v1alpha1.SelfTestSpec{Checks: []v1alpha1.CheckName{v1alpha1.CheckExeLowerLayer}}},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: withChecks(verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2"), passed(v1alpha1.CheckExeLowerLayer))}, AttemptFailed},
		{"passed every required check", both,
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: withChecks(verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2"),
				passed(v1alpha1.CheckExeLowerLayer), passed(v1alpha1.CheckExeUpperLayer))}, Verified},
		{"passed for another driver", v1alpha1.NodeSensorSpec{Driver: "kmod", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Verifying},
		{"passed with no boot ID", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "")}, Verifying},
		{"passed on a node whose boot ID is unknown", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: noBoot, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "")}, Verifying},
		{"previous pass with no boot ID keeps nothing", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 3, ProvenAttempt: 2},
			v1alpha1.NodeSensorStatus{Probe: noBoot, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "")}, Verifying},
		{"previous pass without checks keeps nothing", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 3, ProvenAttempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: withChecks(verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2"))}, Verifying},
		{"sensor unavailable is not the driver's failure", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: func() *v1alpha1.SelfTestStatus {
				st := verdict(2, "ebpf", v1alpha1.SelfTestFailed, "boot-2")
				st.Reason = v1alpha1.ReasonSensorUnavailable
				return st
			}()}, SensorUnavailable},
		{"heartbeat expired", v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 2},
			v1alpha1.NodeSensorStatus{Probe: probe, HeartbeatTime: &stale, SelfTest: verdict(2, "ebpf", v1alpha1.SelfTestPassed, "boot-2")}, HeartbeatExpired},
	}
	for _, tc := range cases {
		ns := &v1alpha1.NodeSensor{Spec: tc.spec, Status: tc.st}
		if got := Classify(ns, now, 2*time.Minute); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
	// A driver predicted before the probe (internal/prediction): verifying, its slot held, until
	// its agent reports facts and verdict (or the manager withdraws it: no driver, the attempt
	// kept); a verdict without facts proves nothing.
	predicted := v1alpha1.NodeSensorSpec{Driver: "modern_ebpf", Attempt: 1, PredictedFrom: "like-node"}
	withdrawn := v1alpha1.NodeSensorSpec{Attempt: 1, PredictedFrom: "like-node"}
	for _, tc := range []struct {
		name string
		spec v1alpha1.NodeSensorSpec
		st   v1alpha1.NodeSensorStatus
		want Phase
	}{
		{"predicted, no report yet", predicted, v1alpha1.NodeSensorStatus{}, Verifying},
		{"predicted, agent alive without a report yet", predicted, v1alpha1.NodeSensorStatus{HeartbeatTime: &fresh}, Verifying},
		{"predicted, a pass without facts", predicted,
			v1alpha1.NodeSensorStatus{SelfTest: verdict(1, "modern_ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Verifying},
		{"predicted, facts and pass together", predicted,
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(1, "modern_ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Verified},
		{"withdrawn, no facts", withdrawn, v1alpha1.NodeSensorStatus{}, AwaitingProbe},
		{"withdrawn, facts and a late pass of the prediction", withdrawn,
			v1alpha1.NodeSensorStatus{Probe: probe, SelfTest: verdict(1, "modern_ebpf", v1alpha1.SelfTestPassed, "boot-2")}, Queued},
	} {
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
	probe := &v1alpha1.ProbeFacts{Kernel: v1alpha1.KernelFacts{BootID: v1alpha1.StringFact{Value: "boot-1"}}}
	verifying := &v1alpha1.NodeSensor{Spec: v1alpha1.NodeSensorSpec{Driver: "ebpf", Attempt: 1},
		Status: v1alpha1.NodeSensorStatus{Probe: probe, HeartbeatTime: &stale}}
	if !StalledWhileVerifying(verifying, now) {
		t.Error("a silent node with a driver and no verdict was verifying")
	}
	verified := verifying.DeepCopy()
	verified.Status.SelfTest = &v1alpha1.SelfTestStatus{Driver: "ebpf", Attempt: 1, Result: v1alpha1.SelfTestPassed, BootID: "boot-1",
		Checks: []v1alpha1.CheckResult{{Name: v1alpha1.CheckExeUpperLayer, Result: v1alpha1.SelfTestPassed}}}
	if StalledWhileVerifying(verified, now) {
		t.Error("a silent verified node was not verifying")
	}
}

func TestReprove(t *testing.T) {
	builtin := v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin}
	falco := v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falcosecurity/falco:0.42.1"}
	upperLower := []v1alpha1.CheckName{v1alpha1.CheckExeUpperLayer, v1alpha1.CheckExeLowerLayer}
	spec := v1alpha1.NodeSensorSpec{Driver: "ebpf", Sensor: builtin, SelfTest: v1alpha1.SelfTestSpec{Checks: upperLower}}
	all := []v1alpha1.Driver{"modern_ebpf", "ebpf", "kmod"}
	cases := []struct {
		name       string
		sensor     v1alpha1.SensorSpec
		checks     []v1alpha1.CheckName
		candidates []v1alpha1.Driver
		want       string // a word the reason must hold; "" for none
	}{
		{"nothing changed", builtin, upperLower, all, ""},
		{"checks reordered", builtin, []v1alpha1.CheckName{v1alpha1.CheckExeLowerLayer, v1alpha1.CheckExeUpperLayer}, all, ""},
		{"preference reordered, driver still allowed", builtin, upperLower, []v1alpha1.Driver{"kmod", "ebpf"}, ""},
		{"builtin to falco", falco, upperLower, all, "Falco"},
		{"falco image", v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falcosecurity/falco:0.43.0"}, upperLower, all, "sensor"},
		{"a check added", builtin, append(upperLower, v1alpha1.CheckExeCopyUp), all, "checks"},
		{"driver no longer allowed", builtin, upperLower, []v1alpha1.Driver{"modern_ebpf"}, "no longer allowed"},
	}
	for _, tc := range cases {
		got := Reprove(spec, tc.sensor, tc.checks, tc.candidates)
		if (got == "") != (tc.want == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want a reason holding %q", tc.name, got, tc.want)
		}
	}
}

func TestBrownout(t *testing.T) {
	fleet := func(expired, healthy int) []Node {
		var out []Node
		for i := 0; i < expired; i++ {
			out = append(out, Node{Phase: HeartbeatExpired})
		}
		for i := 0; i < healthy; i++ {
			out = append(out, Node{Phase: Verified})
		}
		return out
	}
	cases := []struct {
		expired, healthy int
		want             bool
	}{
		{1, 0, false}, // one silent node is that node's problem
		{2, 0, false}, // so are two: small profiles keep their taints
		{3, 0, true},  // everyone at once
		{6, 4, true},  // 60%
		{5, 5, false}, // 50%: below the threshold
		{11, 9, true}, // 55%
		{10, 90, false},
	}
	for _, c := range cases {
		expired, got := Brownout(fleet(c.expired, c.healthy))
		if got != c.want || expired != c.expired {
			t.Errorf("%d expired of %d: brownout %v (%d), want %v", c.expired, c.expired+c.healthy, got, expired, c.want)
		}
	}
	// Nodes without a NodeSensor have no agent reporting: they do not dilute a brownout.
	nodes := fleet(6, 4)
	for i := 0; i < 20; i++ {
		nodes = append(nodes, Node{Phase: AwaitingProbe, Uncreated: true})
	}
	if _, got := Brownout(nodes); !got {
		t.Error("6 of 10 reporting nodes expired, with 20 uncreated: no brownout")
	}
}

func TestAgentPodReplacement(t *testing.T) {
	cases := []struct {
		phase                     Phase
		agent                     AgentPod
		atOnce, awaits, holdsSlot bool
	}{
		{Verified, AgentCurrent, false, false, false},
		{Verified, AgentOutdated, false, true, false},
		{Reverify, AgentOutdated, false, true, false},
		{Outdated, AgentOutdated, false, true, false},
		{Reverifying, AgentOutdated, false, false, false},
		{Verified, AgentTerminating, false, false, true},
		{Reverify, AgentReplaced, false, false, true},
		{Queued, AgentOutdated, true, false, false},
		{AwaitingProbe, AgentOutdated, true, false, false},
		{Verifying, AgentOutdated, true, false, false},
		{NoSupportedDriver, AgentOutdated, true, false, false},
		{SensorUnavailable, AgentOutdated, true, false, false},
		{SensorUnhealthy, AgentOutdated, true, false, false},
		{HeartbeatExpired, AgentOutdated, true, false, false},
		{Verifying, AgentTerminating, false, false, false},
		{Queued, AgentCurrent, false, false, false},
	}
	for _, c := range cases {
		if got := ReplaceAtOnce(c.phase, c.agent); got != c.atOnce {
			t.Errorf("ReplaceAtOnce(%s, %q) = %v", c.phase, c.agent, got)
		}
		if got := AwaitsReplacement(c.phase, c.agent); got != c.awaits {
			t.Errorf("AwaitsReplacement(%s, %q) = %v", c.phase, c.agent, got)
		}
		if got := Replacing(c.phase, c.agent); got != c.holdsSlot {
			t.Errorf("Replacing(%s, %q) = %v", c.phase, c.agent, got)
		}
	}
}
