// Package rollout paces verification across a profile's nodes: canary nodes first, then never
// more than maxUnavailable nodes verifying at once, and a pause after too many failures.
// It decides only which queued nodes may start now; it does no I/O.
package rollout

import (
	"fmt"
	"sort"

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
}

// Plan is the rollout's answer.
type Plan struct {
	// Start lists the queued nodes that may be assigned a driver now, in order.
	Start []string
	// InFlight is how many nodes are verifying now, before Start.
	InFlight int
	// Blocked explains why queued nodes wait, empty when none wait for a reason other than slots.
	Blocked string
	// Paused is set when the rollout stopped after failures.
	Paused bool
}

// Decide returns which waiting nodes may start verifying. Canaries start first. Other queued
// nodes wait until every canary is proven; other nodes waiting to re-verify after an upgrade wait
// until every canary is verified by the new agent. Nodes start in name order, so the rollout is
// reproducible.
func Decide(in Input) Plan {
	var p Plan
	var failed int
	canariesProven, canariesCurrent := true, true
	var waitingCanaries, queuedOthers, reverifyOthers []string
	for _, n := range in.Nodes {
		if n.Phase.InFlight() || n.Stalled {
			p.InFlight++
		}
		if n.Phase == nodestate.NoSupportedDriver {
			failed++
		}
		if in.Canaries[n.Name] {
			canariesProven = canariesProven && n.Phase.Proven()
			canariesCurrent = canariesCurrent && n.Phase == nodestate.Verified
		}
		switch {
		case !n.Phase.Waiting():
		case in.Canaries[n.Name]:
			waitingCanaries = append(waitingCanaries, n.Name)
		case n.Phase == nodestate.Queued:
			queuedOthers = append(queuedOthers, n.Name)
		default:
			reverifyOthers = append(reverifyOthers, n.Name)
		}
	}
	if in.PauseOnFailures > 0 && failed >= in.PauseOnFailures {
		p.Paused = true
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
		p.Blocked = fmt.Sprintf("%d nodes wait for the canary nodes to be re-verified by the new agent", len(reverifyOthers))
	}
	sort.Strings(candidates[len(waitingCanaries):])
	sort.Strings(candidates[:len(waitingCanaries)])
	slots := max(in.MaxUnavailable, 1) - p.InFlight
	for _, name := range candidates {
		if slots <= 0 {
			break
		}
		p.Start = append(p.Start, name)
		slots--
	}
	return p
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
