package selection

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// GroupKey is what decides how a driver behaves on a node: the kernel build, the machine, the
// distro and the sensor. Nodes with equal keys are one group and share verdicts.
type GroupKey struct {
	KernelRelease string
	Architecture  string
	Distro        string
	Sensor        string
}

// String is the key in one line: release/arch/distro/sensor.
func (k GroupKey) String() string {
	return strings.Join([]string{k.KernelRelease, k.Architecture, k.Distro, k.Sensor}, "/")
}

// KeyOf returns a node's group under a sensor (SensorName). ok is false when the kernel release is
// unknown: such a node belongs to no group, learns alone and is never gated.
func KeyOf(f v1alpha1.ProbeFacts, sensor string) (GroupKey, bool) {
	if f.Kernel.Release.Value == "" {
		return GroupKey{}, false
	}
	distro := strings.TrimSpace(f.Distro.ID + " " + f.Distro.VersionID)
	return GroupKey{KernelRelease: f.Kernel.Release.Value, Architecture: f.Kernel.Architecture.Value, Distro: distro, Sensor: sensor}, true
}

// SensorName names a sensor and its version for a group key: Falco with its version (the image
// when no version is known), Builtin with the agent version that carries it.
func SensorName(s v1alpha1.SensorSpec, agentVersion string) string {
	if s.Kind == v1alpha1.SensorFalco {
		if v, ok := FalcoVersion(s); ok {
			return "Falco " + v.String()
		}
		return "Falco " + s.Image
	}
	name := "Builtin"
	if agentVersion != "" {
		name += " " + agentVersion
	}
	if s.Image != "" {
		name += " " + s.Image
	}
	return name
}

// FailureClass says what a failed self-test tells about the other nodes of its group.
type FailureClass string

const (
	// FailureKernel belongs to the kernel (and the sensor build): the sensor did not load or
	// attach, or it reported a wrong event. Every node of the group would see the same.
	FailureKernel FailureClass = "Kernel"
	// FailureTimeout: a check saw no event in time. It may be the driver, or a slow or busy node:
	// never shared.
	FailureTimeout FailureClass = "Timeout"
	// FailureInconclusive: events were dropped, nothing was proven either way.
	FailureInconclusive FailureClass = "Inconclusive"
	// FailureNodeLocal: the node itself (staging, a pod that runs another sensor, a restart that
	// never completed, an incomplete or interrupted report, a reason DriverPilot does not know).
	FailureNodeLocal FailureClass = "NodeLocal"
)

// ClassifyFailure classifies a self-test failure by its reason: SelfTestStatus.reason, or a
// FailedAttempt's reason ("Reason: message", as the manager records it). Only the reasons that
// say the kernel refused or misread the driver are FailureKernel; an unknown reason is node-local,
// so a new agent reason never spreads before someone decided it should.
func ClassifyFailure(reason string) FailureClass {
	switch ReasonOf(reason) {
	case "CheckFailed", // an event arrived and said the wrong thing (upper reported as lower: falco#3286)
		"SensorLoadFailed",   // the verifier or the loader refused the program on this kernel
		"SensorAttachFailed", // the kernel refused the attach point
		"DriverNotSupported": // the sensor has no such driver: true on every node
		return FailureKernel
	case "CheckTimedOut":
		return FailureTimeout
	case "EventsDropped":
		return FailureInconclusive
	}
	return FailureNodeLocal
}

// ReasonOf is the CamelCase reason of a recorded failure ("Reason: message").
func ReasonOf(recorded string) string {
	if i := strings.IndexByte(recorded, ':'); i >= 0 {
		recorded = recorded[:i]
	}
	return strings.TrimSpace(recorded)
}

// Evidence is one node's self-test outcome with one driver, as a group learns from it.
type Evidence struct {
	Node    string
	Driver  v1alpha1.Driver
	Attempt int32
	// Passed is a standing pass (the node is verified with the driver now); otherwise a failure.
	Passed bool
	// Reason is the failure's reason ("Reason: message").
	Reason string
	Time   time.Time
}

// DriverVerdict is what a group learned about one driver.
type DriverVerdict struct {
	Driver  v1alpha1.Driver
	Verdict v1alpha1.FleetVerdict
	// Passed and Failed count distinct nodes: standing passes and failures of the kernel's.
	Passed, Failed, OtherFailures int
	// From is the first failure of the kernel's (for Fails and AwaitingAgreement), or the
	// first pass (for Works).
	From Evidence
}

// GroupVerdicts are a group's verdicts per driver.
type GroupVerdicts map[v1alpha1.Driver]DriverVerdict

// Agreement is how many nodes must fail a driver for a reason of the kernel before the failure
// becomes the rule of a group of size nodes: one in a small group, two in a group larger than
// v1alpha1.FleetLargeGroup (one bad node, or one misclassified reason, must not rule fifty).
func Agreement(size int) int {
	if size > v1alpha1.FleetLargeGroup {
		return 2
	}
	return 1
}

// Learn turns the evidence of a group's nodes (size of them) into verdicts. Failures older than
// forget are ignored (the profile's reset); standing passes are what the nodes prove now. A standing pass on any node overturns failures: the
// driver works on this kernel, so a failure elsewhere was that node's. Without a pass, a driver
// that failed for a reason of the kernel on Agreement(size) distinct nodes Fails; on fewer it
// awaits agreement. Timeouts and node-local failures are counted, never shared.
func Learn(evidence []Evidence, size int, forget time.Time) GroupVerdicts {
	out := GroupVerdicts{}
	firstPass, firstFail := map[v1alpha1.Driver]Evidence{}, map[v1alpha1.Driver]Evidence{}
	seen := map[string]bool{}
	for _, e := range evidence {
		if !e.Passed && e.Time.Before(forget) {
			continue // a standing pass is the present, never forgotten
		}
		class := FailureKernel
		if !e.Passed {
			class = ClassifyFailure(e.Reason)
		}
		// A node counts once per driver and kind of outcome.
		id := fmt.Sprintf("%s\x00%s\x00%t\x00%s", e.Node, e.Driver, e.Passed, class)
		if seen[id] {
			continue
		}
		seen[id] = true
		v := out[e.Driver]
		v.Driver = e.Driver
		switch {
		case e.Passed:
			v.Passed++
			if f, ok := firstPass[e.Driver]; !ok || earlier(e, f) {
				firstPass[e.Driver] = e
			}
		case class == FailureKernel:
			v.Failed++
			if f, ok := firstFail[e.Driver]; !ok || earlier(e, f) {
				firstFail[e.Driver] = e
			}
		default:
			v.OtherFailures++
		}
		out[e.Driver] = v
	}
	for d, v := range out {
		v.From = firstFail[d]
		switch {
		case v.Passed > 0 && v.Failed > 0:
			v.Verdict = v1alpha1.FleetMixed
		case v.Passed > 0:
			v.Verdict, v.From = v1alpha1.FleetWorks, firstPass[d]
		case v.Failed >= Agreement(size):
			v.Verdict = v1alpha1.FleetFails
		case v.Failed > 0:
			v.Verdict = v1alpha1.FleetAwaitingAgreement
		default:
			v.Verdict = v1alpha1.FleetUntested
		}
		out[d] = v
	}
	return out
}

func earlier(a, b Evidence) bool {
	if !a.Time.Equal(b.Time) {
		return a.Time.Before(b.Time)
	}
	return a.Node < b.Node
}

// ApplyLearned applies a group's verdicts to one node's decision: a driver the group learned
// to fail is skipped, with a reason that names the node and attempt it was learned from; a
// driver that passed on the group's nodes loses the doubt that ranked it lower, so the node
// starts with it when the preference allows. node is the node decided for: its own failures
// are already its own reasons.
func ApplyLearned(d Decision, g GroupVerdicts, key GroupKey, node string) Decision {
	if len(g) == 0 {
		return d
	}
	var keep []v1alpha1.Driver
	var fleet []v1alpha1.DriverReason // first: the node's reasons are capped from the end
	for _, c := range d.Candidates {
		v, ok := g[c]
		if ok && v.Verdict == v1alpha1.FleetFails && v.From.Node != node {
			more := ""
			if v.Failed > 1 {
				more = fmt.Sprintf(" and %d more of its nodes", v.Failed-1)
			}
			fleet = append(fleet, clip(v1alpha1.DriverReason{Driver: c, Source: v1alpha1.ReasonSourceFleet, Rule: "fleet-learned-failure",
				Message: fmt.Sprintf("learned from node %s (attempt %d)%s of this node's group (kernel %s, %s, %s, %s): the self-test failed with %s for a reason of the kernel: %s",
					v.From.Node, v.From.Attempt, more, key.KernelRelease, key.Architecture, key.Distro, key.Sensor, c, v.From.Reason)}))
			continue
		}
		keep = append(keep, c)
	}
	// A driver proven on the group loses its doubt: it ranks with the drivers without one, in
	// preference order.
	var sure, unsure []v1alpha1.Driver
	for _, c := range keep {
		v, ok := g[c]
		doubted := slices.Contains(d.Unsure, c)
		if doubted && ok && v.Verdict == v1alpha1.FleetWorks {
			doubted = false
			fleet = append(fleet, clip(v1alpha1.DriverReason{Driver: c, Source: v1alpha1.ReasonSourceFleet, Rule: "fleet-learned-pass",
				Message: fmt.Sprintf("its doubt is settled: verified on %d nodes of this node's group (first node %s, attempt %d)", v.Passed, v.From.Node, v.From.Attempt)}))
		}
		if doubted {
			unsure = append(unsure, c)
		} else {
			sure = append(sure, c)
		}
	}
	slices.SortStableFunc(sure, func(a, b v1alpha1.Driver) int { return rank(d.Preference, a) - rank(d.Preference, b) })
	keep, d.Unsure = append(sure, unsure...), unsure
	d.Reasons = append(fleet, d.Reasons...)
	d.Candidates = append([]v1alpha1.Driver{}, keep...)
	d.Driver = ""
	if len(d.Candidates) > 0 {
		d.Driver = d.Candidates[0]
	}
	return d
}

func rank(pref []v1alpha1.Driver, d v1alpha1.Driver) int {
	if i := slices.Index(pref, d); i >= 0 {
		return i
	}
	return len(pref)
}
