// Package rollout paces verification across a profile's nodes: canary nodes first, then never
// more than maxUnavailable nodes verifying at once, and a pause after too many failures.
// It decides only which queued nodes may start now; it does no I/O.
package rollout

import (
	"fmt"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/driverpilot/driverpilot/internal/nodestate"
)

// Input is the state of a profile's nodes and its rollout settings.
type Input struct {
	Nodes []nodestate.Node
	// Canaries are the names of the canary nodes (a subset of Nodes).
	Canaries map[string]bool
	// MaxUnavailable is the resolved number of nodes that may verify at once (at least 1).
	MaxUnavailable int
	// PauseOnFailures pauses the rollout once this many nodes have no supported driver; 0 never.
	PauseOnFailures int
	// Groups gate each group of nodes behind its first node (empty: no groups).
	Groups Groups
}

// Plan is the rollout's answer.
type Plan struct {
	// Start lists the waiting nodes that get a new attempt now, in order: first the proven
	// nodes whose outdated agent pod was replaced and is gone (they hold their slot already),
	// then those the slots allow.
	Start []string
	// Replace lists the nodes whose outdated agent pod is deleted now: nodes not protected now
	// (at once, slots or not), and proven nodes the rollout lets re-verify under the new pod
	// template (each takes a slot, canaries first; its new attempt follows once the old pod is gone).
	Replace []string
	// InFlight is how many nodes are verifying now, before Start.
	InFlight int
	// Blocked explains why queued nodes wait, empty when none wait for a reason other than slots.
	Blocked string
	// Paused is set when the rollout stopped: after failures, or on a failed or silent canary.
	Paused bool
	// Reason is the CamelCase reason of a pause: TooManyFailures, CanaryFailed or CanarySilent.
	Reason string
}

// Reasons of a paused rollout.
const (
	ReasonTooManyFailures = "TooManyFailures"
	ReasonCanaryFailed    = "CanaryFailed"
	ReasonCanarySilent    = "CanarySilent"
)

// Decide returns which waiting nodes may start verifying. Canaries start first. Other queued
// nodes wait until every canary is proven; other nodes waiting to re-verify (after an upgrade, a
// profile edit or a new agent pod template) wait until every canary is verified under the new
// agent, spec and template. A proven node whose agent pod runs an outdated template starts by
// the replacement of that pod (Replace), and holds its slot until it is verified again; a node
// that is not protected has its outdated pod replaced at once. A canary
// with no supported driver, or whose agent is silent, pauses everything. Nodes start in name
// order, so the rollout is reproducible.
func Decide(in Input) Plan {
	var p Plan
	var failed int
	canariesProven, canariesCurrent := true, true
	var waitingCanaries, queuedOthers, reverifyOthers, failedCanaries, silentCanaries []string
	replaceFirst := map[string]bool{}
	_, brownout := nodestate.Brownout(in.Nodes)
	for _, n := range in.Nodes {
		if n.Phase.InFlight() || n.Stalled || nodestate.Replacing(n.Phase, n.Agent) {
			p.InFlight++
		}
		if nodestate.ReplaceAtOnce(n.Phase, n.Agent) && !(brownout && n.Phase == nodestate.HeartbeatExpired) {
			// (In a brownout the silent agents most likely work: the cause is the control plane
			// or the network. Restarting them all at once would re-test every node unpaced.)
			p.Replace = append(p.Replace, n.Name)
		}
		if n.Agent == nodestate.AgentReplaced && (n.Phase == nodestate.Verified || n.Phase == nodestate.Outdated || n.Phase == nodestate.Reverify) {
			// Its old pod is gone: it took its slot when the rollout replaced the pod, and its
			// new attempt goes out now, paused rollout or not, before the new pod tests the old one.
			p.Start = append(p.Start, n.Name)
		}
		if nodestate.AwaitsReplacement(n.Phase, n.Agent) {
			replaceFirst[n.Name] = true
		}
		if n.Phase == nodestate.NoSupportedDriver {
			failed++
		}
		if in.Canaries[n.Name] {
			switch {
			case n.Phase == nodestate.NoSupportedDriver:
				failedCanaries = append(failedCanaries, n.Name)
			case n.Silent:
				silentCanaries = append(silentCanaries, n.Name)
			}
			canariesProven = canariesProven && n.Phase.Proven()
			canariesCurrent = canariesCurrent && n.Phase == nodestate.Verified && n.Agent == nodestate.AgentCurrent
		}
		switch {
		case !n.Phase.Waiting() && !replaceFirst[n.Name]:
		case n.Agent == nodestate.AgentTerminating || n.Agent == nodestate.AgentReplaced:
			// Started already: its pod is being replaced, or its new attempt goes out above.
		case in.Canaries[n.Name]:
			waitingCanaries = append(waitingCanaries, n.Name)
		case n.Phase == nodestate.Queued:
			queuedOthers = append(queuedOthers, n.Name)
		default:
			reverifyOthers = append(reverifyOthers, n.Name)
		}
	}
	const resume = "; the rollout resumes by itself once every canary is verified, or remove spec.rollout.canary to go on without canaries"
	switch {
	case len(failedCanaries) > 0:
		p.Paused, p.Reason = true, ReasonCanaryFailed
		p.Blocked = fmt.Sprintf("rollout paused: canary %s has no supported driver (see `kubectl get nodesensor %s -o yaml` for every reason); "+
			"fix the node or allow another driver and it is decided again", Names(failedCanaries, 3), failedCanaries[0]) + resume
		return p
	case len(silentCanaries) > 0:
		p.Paused, p.Reason = true, ReasonCanarySilent
		p.Blocked = fmt.Sprintf("rollout paused: the agent of canary %s does not report (no heartbeat within the timeout); "+
			"check the agent pod on that node (kubectl -n <namespace> get pods -o wide --field-selector spec.nodeName=%s)", Names(silentCanaries, 3), silentCanaries[0]) + resume
		return p
	case in.PauseOnFailures > 0 && failed >= in.PauseOnFailures:
		p.Paused, p.Reason = true, ReasonTooManyFailures
		p.Blocked = fmt.Sprintf("rollout paused: %d nodes have no supported driver (pauseOnFailures is %d)", failed, in.PauseOnFailures)
		return p
	}
	candidates := waitingCanaries
	if canariesProven {
		candidates = append(candidates, queuedOthers...)
	} else if len(queuedOthers) > 0 {
		p.Blocked = fmt.Sprintf("%d nodes wait for the canary nodes to be verified", len(queuedOthers))
	}
	if canariesCurrent {
		candidates = append(candidates, reverifyOthers...)
	} else if len(reverifyOthers) > 0 {
		p.Blocked = fmt.Sprintf("%d nodes wait for the canary nodes to be re-verified (new agent or new profile settings)", len(reverifyOthers))
	}
	sort.Strings(candidates[len(waitingCanaries):])
	sort.Strings(candidates[:len(waitingCanaries)])
	candidates, held := in.Groups.gate(in.Nodes, candidates)
	if p.Blocked == "" {
		p.Blocked = held
	}
	slots := max(in.MaxUnavailable, 1) - p.InFlight
	for _, name := range candidates {
		if slots <= 0 {
			break
		}
		if replaceFirst[name] {
			p.Replace = append(p.Replace, name)
		} else {
			p.Start = append(p.Start, name)
		}
		slots--
	}
	return p
}

// Names lists up to n names, then how many more: messages name a few nodes, not a fleet.
func Names(all []string, n int) string {
	if len(all) > n {
		return fmt.Sprintf("%s and %d more", strings.Join(all[:n], ", "), len(all)-n)
	}
	return strings.Join(all, ", ")
}

// ChooseCanaries returns the canary nodes, sorted: every governed node the canary selector
// matched (matched), then count more. Count canaries are chosen once: those recorded (the last
// pass's answer) that are still governed keep their slots, and only a free slot takes the next
// governed node in name order, so a new node whose name sorts first does not take a slot.
func ChooseCanaries(governed []string, matched map[string]bool, count int, recorded []string) []string {
	isGoverned := make(map[string]bool, len(governed))
	for _, n := range governed {
		isGoverned[n] = true
	}
	var out []string
	for _, n := range governed {
		if matched[n] {
			out = append(out, n)
		}
	}
	chosen := map[string]bool{}
	for _, n := range recorded {
		if len(chosen) < count && isGoverned[n] && !matched[n] && !chosen[n] {
			chosen[n] = true
		}
	}
	sorted := append([]string(nil), governed...)
	sort.Strings(sorted)
	for _, n := range sorted {
		if len(chosen) >= count {
			break
		}
		if !matched[n] {
			chosen[n] = true
		}
	}
	for n := range chosen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// ResolveMaxUnavailable turns the profile's maxUnavailable (count or percentage, rounded up) into
// a count of at least 1 for the given number of selected nodes.
func ResolveMaxUnavailable(v *intstr.IntOrString, selected int) (int, error) {
	if v == nil {
		return 1, nil
	}
	n, err := intstr.GetScaledValueFromIntOrPercent(v, selected, true)
	if err != nil {
		return 0, fmt.Errorf("maxUnavailable: %w", err)
	}
	return max(n, 1), nil
}
