// Package nodestate classifies a NodeSensor into the phase the manager acts on, and rolls the
// phases of a profile's nodes up into the profile's counts. Pure functions: the reconciler and
// the tests call them directly.
package nodestate

import (
	"fmt"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

// Phase is where a node stands in its verification.
type Phase string

const (
	// AwaitingProbe: the agent has not reported the node's facts yet.
	AwaitingProbe Phase = "AwaitingProbe"
	// Queued: facts are in, no driver is assigned yet (the rollout has not reached the node).
	Queued Phase = "Queued"
	// Verifying: a driver is assigned and its self-test verdict is not in yet.
	Verifying Phase = "Verifying"
	// AttemptFailed: the self-test of the current driver failed; the manager must fall back.
	AttemptFailed Phase = "AttemptFailed"
	// Verified: the self-test passed with the current driver in the current boot.
	Verified Phase = "Verified"
	// NoSupportedDriver: every allowed driver was excluded or failed.
	NoSupportedDriver Phase = "NoSupportedDriver"
	// HeartbeatExpired: the agent stopped reporting; what it proved may no longer hold.
	HeartbeatExpired Phase = "HeartbeatExpired"
	// Outdated: verified by an older agent that still runs there (its replacement has not
	// started yet); it keeps its verified state.
	Outdated Phase = "Outdated"
	// Reverify: verified, but the proof no longer answers what the node must prove: an older
	// agent proved it and a newer one now runs (an operator upgrade), or the profile changed the
	// sensor, the checks or the allowed drivers (Reprove). It keeps its verified state and waits
	// for the rollout to let it re-verify.
	Reverify Phase = "Reverify"
	// Reverifying: a new attempt with the driver that passed the previous one, in the same
	// boot; the node stays verified on that proof until the new verdict is in.
	Reverifying Phase = "Reverifying"
	// SensorUnhealthy: the driver passed its self-test, but the agent has since reported that the
	// sensor stopped working (its SensorHealthy condition is False). The node is not verified
	// until the agent reports a new passing self-test, which sets the condition True again. It
	// holds no rollout slot and is not a failed attempt.
	SensorUnhealthy Phase = "SensorUnhealthy"
	// SensorUnavailable: the agent could not build the sensor the spec names (its pod runs
	// another sensor kind, for example during a Builtin/Falco switch). Not the driver's fault:
	// no failed attempt is recorded, and the agent tests again once its pod matches the spec.
	SensorUnavailable Phase = "SensorUnavailable"
)

// Classify returns the phase of a NodeSensor at time now. A heartbeat older than
// heartbeatTimeout overrides every other phase once the agent has reported at least once.
func Classify(ns *v1alpha1.NodeSensor, now time.Time, heartbeatTimeout time.Duration) Phase {
	st := ns.Status
	if st.HeartbeatTime != nil && now.Sub(st.HeartbeatTime.Time) > heartbeatTimeout {
		return HeartbeatExpired
	}
	if st.Probe == nil {
		// A driver predicted before the probe (internal/prediction) is tested at once, and its
		// agent reports facts and verdict together: it holds its slot until then, or until the
		// manager withdraws a prediction no agent answered.
		if ns.Spec.Driver != "" {
			return Verifying
		}
		return AwaitingProbe
	}
	if ns.Spec.Driver == "" {
		// (A withdrawn prediction keeps its attempt, so a late verdict for it matches nothing.)
		if ns.Spec.Attempt > 0 && ns.Spec.PredictedFrom == "" {
			return NoSupportedDriver
		}
		return Queued
	}
	t := st.SelfTest
	// A verdict from an earlier boot says nothing about this one: the agent tests again. A boot
	// ID nobody reported matches nothing, or any old verdict would pass for this boot's.
	sameBoot := t != nil && t.BootID != "" && t.BootID == st.Probe.Kernel.BootID.Value
	if t == nil || t.Attempt != ns.Spec.Attempt || t.Driver != ns.Spec.Driver || !sameBoot {
		if sameBoot && t.Attempt == ns.Spec.Attempt-1 && t.Attempt == ns.Spec.ProvenAttempt && t.Attempt > 0 &&
			t.Driver == ns.Spec.Driver && t.Result == v1alpha1.SelfTestPassed && MissingCheck(t, nil) == "" {
			return unlessSensorUnhealthy(ns, Reverifying)
		}
		return Verifying
	}
	switch t.Result {
	case v1alpha1.SelfTestPassed:
		if MissingCheck(t, ns.Spec.SelfTest.Checks) != "" {
			// "Passed" without the checks this node must pass proves nothing: an agent that
			// cannot stage them has to say Failed or NotApplicable, and is treated as if it had.
			return AttemptFailed
		}
		return unlessSensorUnhealthy(ns, Verified)
	case v1alpha1.SelfTestFailed, v1alpha1.SelfTestNotApplicable:
		if t.Reason == v1alpha1.ReasonSensorUnavailable {
			return SensorUnavailable
		}
		// NotApplicable never counts as proof: the driver cannot be trusted on this node.
		return AttemptFailed
	}
	// Inconclusive (the sensor lost events during the run) is no proof either way: the agent runs
	// it again with backoff, and it is never recorded as a failed attempt against the driver.
	return Verifying
}

// unlessSensorUnhealthy returns SensorUnhealthy instead of a proven phase when the agent reports
// that the sensor stopped working after its self-test passed.
func unlessSensorUnhealthy(ns *v1alpha1.NodeSensor, proven Phase) Phase {
	if meta.IsStatusConditionFalse(ns.Status.Conditions, v1alpha1.ConditionSensorHealthy) {
		return SensorUnhealthy
	}
	return proven
}

// MissingCheck returns the first check of required (ExeUpperLayer always among them) that the
// self-test does not report as Passed, or "" when every one passed.
func MissingCheck(t *v1alpha1.SelfTestStatus, required []v1alpha1.CheckName) v1alpha1.CheckName {
	passed := map[v1alpha1.CheckName]bool{}
	for _, c := range t.Checks {
		if c.Result == v1alpha1.SelfTestPassed {
			passed[c.Name] = true
		}
	}
	for _, c := range append([]v1alpha1.CheckName{v1alpha1.CheckExeUpperLayer}, required...) {
		if !passed[c] {
			return c
		}
	}
	return ""
}

// InFlight reports whether the phase occupies one of the rollout's maxUnavailable slots.
func (p Phase) InFlight() bool {
	return p == Verifying || p == AttemptFailed || p == Reverifying || p == SensorUnavailable
}

// Proven reports whether the node counts as verified: its current driver passed a self-test.
func (p Phase) Proven() bool {
	return p == Verified || p == Outdated || p == Reverify || p == Reverifying
}

// Waiting reports whether the node waits for the rollout to start (or restart) its verification.
func (p Phase) Waiting() bool { return p == Queued || p == Reverify }

// NeedsReverify reports whether a verified node's proof came from another agent version than
// the desired one, which now runs on the node: after an operator upgrade it must be proven again.
func NeedsReverify(ns *v1alpha1.NodeSensor, desiredAgent string) bool {
	return ProvedByOlderAgent(ns, desiredAgent) && ns.Status.AgentVersion == desiredAgent
}

// ProvedByOlderAgent reports whether the node's proof came from another agent version than the
// desired one.
func ProvedByOlderAgent(ns *v1alpha1.NodeSensor, desiredAgent string) bool {
	t := ns.Status.SelfTest
	return desiredAgent != "" && t != nil && t.AgentVersion != desiredAgent
}

// AgentPod is where a node's agent pod stands against the profile's current pod template.
// The manager replaces agent pods itself (the DaemonSet's update strategy is OnDelete), so a
// template change reaches a proven node only when the rollout lets that node re-verify.
type AgentPod string

const (
	// AgentCurrent: the pod runs the current template, or no pod is known: nothing to replace.
	AgentCurrent AgentPod = ""
	// AgentOutdated: the pod runs an older template and nobody is deleting it.
	AgentOutdated AgentPod = "Outdated"
	// AgentTerminating: an outdated pod is being deleted.
	AgentTerminating AgentPod = "Terminating"
	// AgentReplaced: the manager deleted the node's outdated pod to re-verify the node under the
	// current template, and the old pod is gone: the node gets its new attempt now.
	AgentReplaced AgentPod = "Replaced"
)

// ReplaceAtOnce reports whether a node's outdated agent pod is replaced without waiting for the
// rollout: the node is not protected now (nothing proven to keep), so a new pod costs it
// nothing, and an old pod may not even be able to test the new sensor. (rollout.Decide leaves
// silent nodes alone in a brownout.)
func ReplaceAtOnce(p Phase, a AgentPod) bool { return a == AgentOutdated && !p.Proven() }

// AwaitsReplacement reports whether a proven node waits for the rollout to replace its outdated
// agent pod (and then re-verify under the new template). A node re-verifying already finishes
// first; its pod is replaced after its verdict.
func AwaitsReplacement(p Phase, a AgentPod) bool {
	return a == AgentOutdated && (p == Verified || p == Outdated || p == Reverify)
}

// Replacing reports whether a proven node holds a rollout slot for its agent pod replacement:
// from the deletion of its outdated pod until it verifies again under the new template.
func Replacing(p Phase, a AgentPod) bool {
	return p.Proven() && (a == AgentTerminating || a == AgentReplaced)
}

// Node is one node's phase and driver, the input of Rollup.
type Node struct {
	Name   string
	Phase  Phase
	Driver v1alpha1.Driver
	// Agent is where its agent pod stands against the current pod template.
	Agent AgentPod
	// Stalled marks a node whose agent went silent while it was verifying: it still holds its
	// rollout slot, or a silent fleet would let the rollout start every node.
	Stalled bool
	// Silent marks a node whose agent does not report: its heartbeat expired, or it never
	// reported within the heartbeat timeout. A silent canary pauses the rollout.
	Silent bool
	// Uncreated marks a governed node without a NodeSensor yet (it waits to be created, or for
	// its predicted driver's slot): a node of the rollout, but no agent's to count in a brownout.
	Uncreated bool
}

// StalledWhileVerifying reports whether a node with an expired heartbeat was verifying.
func StalledWhileVerifying(ns *v1alpha1.NodeSensor, now time.Time) bool {
	const forever = time.Duration(1<<63 - 1)
	return Classify(ns, now, forever).InFlight()
}

// Rollup counts nodes by state and verified nodes by driver.
func Rollup(nodes []Node) (v1alpha1.NodeCounts, []v1alpha1.DriverCount) {
	var c v1alpha1.NodeCounts
	perDriver := map[v1alpha1.Driver]int32{}
	for _, n := range nodes {
		c.Selected++
		switch {
		case n.Phase.Proven():
			c.Verified++
			perDriver[n.Driver]++
		case n.Phase == NoSupportedDriver:
			c.Failed++
		default:
			c.Pending++
		}
	}
	var drivers []v1alpha1.DriverCount
	for _, d := range v1alpha1.AllDrivers {
		if perDriver[d] > 0 {
			drivers = append(drivers, v1alpha1.DriverCount{Driver: d, Nodes: perDriver[d]})
		}
	}
	return c, drivers
}

// Reprove says why a verified node's proof does not answer the profile's current spec, or ""
// when it does: another sensor (kind, image or Falco version), other checks, or a driver the
// decision no longer allows (candidates are the current decision's). A change that does not
// alter what the node must prove (timeout, interval, the order of allowed drivers) costs nothing.
func Reprove(spec v1alpha1.NodeSensorSpec, sensor v1alpha1.SensorSpec, checks []v1alpha1.CheckName, candidates []v1alpha1.Driver) string {
	switch {
	case spec.Sensor != sensor:
		return fmt.Sprintf("sensor changed from %s to %s", describeSensor(spec.Sensor), describeSensor(sensor))
	case !sameChecks(spec.SelfTest.Checks, checks):
		return fmt.Sprintf("self-test checks changed from %v to %v", spec.SelfTest.Checks, checks)
	case !slices.Contains(candidates, spec.Driver):
		return fmt.Sprintf("driver %s is no longer allowed on this node", spec.Driver)
	}
	return ""
}

func describeSensor(s v1alpha1.SensorSpec) string {
	out := string(s.Kind)
	if out == "" {
		out = string(v1alpha1.SensorBuiltin)
	}
	if s.Image != "" {
		out += " " + s.Image
	}
	if s.FalcoVersion != "" {
		out += " (Falco " + s.FalcoVersion + ")"
	}
	return out
}

func sameChecks(a, b []v1alpha1.CheckName) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// BrownoutThreshold is the share of a profile's nodes whose heartbeats must expire together for
// a brownout, as the node lifecycle controller's unhealthyZoneThreshold (0.55).
const BrownoutThreshold = 0.55

// Brownout reports how many nodes' heartbeats expired and whether that is a brownout: more than
// two nodes and at least BrownoutThreshold of them, the node lifecycle controller's rule for a
// partially disrupted zone. In a brownout the cause is most likely the control plane or the
// network, not the nodes: they turn Unknown but get no taint.
func Brownout(nodes []Node) (expired int, brownout bool) {
	reporting := 0
	for _, n := range nodes {
		if n.Uncreated {
			continue
		}
		reporting++
		if n.Phase == HeartbeatExpired {
			expired++
		}
	}
	return expired, expired > 2 && float64(expired) >= BrownoutThreshold*float64(reporting)
}
