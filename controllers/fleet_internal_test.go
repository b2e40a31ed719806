package controllers

import (
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/selection"
)

// TestNodeEvidence checks what one node tells its group: failures on its current kernel under
// the group's sensor, a reported failure not yet recorded, and a pass only when it stands under
// the current sensor and agent.
func TestNodeEvidence(t *testing.T) {
	now := time.Date(2026, 11, 30, 13, 0, 0, 0, time.UTC)
	profile := &v1alpha1.SecurityProfile{Spec: v1alpha1.SecurityProfileSpec{Sensor: v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin}}}
	const release, agent = "6.1.0-28-cloud-amd64", "0.2.0"
	sensorName := selection.SensorName(profile.Spec.Sensor, agent)
	base := func() *v1alpha1.NodeSensor {
		ns := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
		ns.Spec = v1alpha1.NodeSensorSpec{Driver: v1alpha1.DriverEBPF, Attempt: 2, Sensor: profile.Spec.Sensor,
			SelfTest: v1alpha1.SelfTestSpec{Checks: []v1alpha1.CheckName{v1alpha1.CheckExeUpperLayer}}}
		ns.Status.Probe = &v1alpha1.ProbeFacts{}
		ns.Status.Probe.Kernel.Release.Value, ns.Status.Probe.Kernel.BootID.Value = release, "boot"
		hb := metav1.NewTime(now)
		ns.Status.HeartbeatTime = &hb
		return ns
	}
	verdict := func(ns *v1alpha1.NodeSensor, r v1alpha1.SelfTestResult, reason string) {
		fin := metav1.NewTime(now.Add(-time.Second))
		ns.Status.SelfTest = &v1alpha1.SelfTestStatus{Driver: ns.Spec.Driver, Attempt: ns.Spec.Attempt, Result: r, Reason: reason,
			BootID: "boot", AgentVersion: agent, FinishTime: &fin,
			Checks: []v1alpha1.CheckResult{{Name: v1alpha1.CheckExeUpperLayer, Result: r}}}
	}
	failedOn := func(rel, sensor string) v1alpha1.FailedAttempt {
		return v1alpha1.FailedAttempt{Driver: v1alpha1.DriverModernEBPF, Attempt: 1, Reason: "CheckFailed: lower", KernelRelease: rel, Sensor: sensor}
	}
	for _, tc := range []struct {
		name  string
		setup func(*v1alpha1.NodeSensor)
		want  string
	}{
		{"a recorded failure on this kernel and sensor, verifying now", func(ns *v1alpha1.NodeSensor) {
			ns.Spec.FailedAttempts = []v1alpha1.FailedAttempt{failedOn(release, sensorName)}
		}, "[modern_ebpf#1 failed]"},
		{"failures on another kernel or under another sensor say nothing", func(ns *v1alpha1.NodeSensor) {
			ns.Spec.FailedAttempts = []v1alpha1.FailedAttempt{failedOn("5.10.0-32-amd64", sensorName), failedOn(release, "Falco 0.38.1")}
		}, "[]"},
		{"a failure recorded by an older manager (no sensor) counts", func(ns *v1alpha1.NodeSensor) {
			ns.Spec.FailedAttempts = []v1alpha1.FailedAttempt{failedOn(release, "")}
		}, "[modern_ebpf#1 failed]"},
		{"a reported failure not recorded yet", func(ns *v1alpha1.NodeSensor) { verdict(ns, v1alpha1.SelfTestFailed, "SensorLoadFailed") },
			"[ebpf#2 failed]"},
		{"a standing pass", func(ns *v1alpha1.NodeSensor) { verdict(ns, v1alpha1.SelfTestPassed, "") }, "[ebpf#2 passed]"},
		{"a pass under the old sensor is no pass of this group", func(ns *v1alpha1.NodeSensor) {
			verdict(ns, v1alpha1.SelfTestPassed, "")
			ns.Spec.Sensor = v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falco:0.38.1"}
		}, "[]"},
		{"a pass by an older agent is no pass of this group", func(ns *v1alpha1.NodeSensor) {
			verdict(ns, v1alpha1.SelfTestPassed, "")
			ns.Status.SelfTest.AgentVersion = "0.1.0"
		}, "[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := base()
			tc.setup(ns)
			var got []string
			for _, e := range nodeEvidence(ns, profile, sensorName, agent, now, time.Minute) {
				outcome := "failed"
				if e.Passed {
					outcome = "passed"
				}
				got = append(got, fmt.Sprintf("%s#%d %s", e.Driver, e.Attempt, outcome))
			}
			if s := fmt.Sprint(got); s != tc.want {
				t.Errorf("evidence %s, want %s", s, tc.want)
			}
		})
	}
}

// TestDriverCell checks the matrix cells as `kubectl get fleetgroups` prints them.
func TestDriverCell(t *testing.T) {
	from := selection.Evidence{Node: "a", Attempt: 1, Reason: "CheckFailed: ExeUpperLayer reported lower"}
	for _, tc := range []struct {
		v    selection.DriverVerdict
		want string
	}{
		{selection.DriverVerdict{Verdict: v1alpha1.FleetWorks, Passed: 49, From: selection.Evidence{Node: "b", Passed: true}}, "Works 49/50"},
		{selection.DriverVerdict{Verdict: v1alpha1.FleetFails, Failed: 2, From: from}, "Fails 2/50 CheckFailed"},
		{selection.DriverVerdict{Verdict: v1alpha1.FleetAwaitingAgreement, Failed: 1, From: from}, "Failed 1/50, awaiting agreement"},
		{selection.DriverVerdict{Verdict: v1alpha1.FleetMixed, Passed: 3, Failed: 1, From: from}, "Mixed 3 passed 1 failed"},
		{selection.DriverVerdict{Verdict: v1alpha1.FleetUntested, OtherFailures: 1}, "Untested (1 timeout/node-local)"},
	} {
		c := driverCell(tc.v, 50)
		if c.Summary != tc.want {
			t.Errorf("summary %q, want %q", c.Summary, tc.want)
		}
		if tc.v.Verdict == v1alpha1.FleetFails && (c.LearnedFrom != "node a attempt 1" || c.Reason != from.Reason) {
			t.Errorf("fails cell %+v", c)
		}
	}
}
