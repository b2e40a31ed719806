package rollout

import (
	"fmt"

	"github.com/driverpilot/driverpilot/internal/nodestate"
)

// Groups are the profile's node groups (kernel release, architecture, distro, sensor) for the
// per-group canary: a group is met by one node, not by maxUnavailable nodes.
type Groups struct {
	// Of maps a node to its group; a node without one is never gated.
	Of map[string]string
	// Open lists the groups whose rest may start: one of their nodes is verified under the
	// current spec, and no driver of theirs awaits a second node's agreement on a failure.
	// Until then a group verifies one node at a time.
	Open map[string]bool
	// Released lists nodes in flight that no longer hold their group back (they keep their
	// rollout slot): they answered without proving anything (an inconclusive run, a verdict
	// for another boot), or have verified for too long. A first node that hangs must not stop
	// its group for good.
	Released map[string]bool
}

// gate keeps, of the candidates (in order), those their group lets start: every candidate of
// an open group, and of a closed one its first candidate only when none of its nodes verifies
// now. It says why candidates were held back, empty when none was.
func (g Groups) gate(nodes []nodestate.Node, candidates []string) ([]string, string) {
	if len(g.Of) == 0 {
		return candidates, ""
	}
	busy := map[string]bool{}
	for _, n := range nodes {
		if grp := g.Of[n.Name]; grp != "" && !g.Released[n.Name] && (n.Phase.InFlight() || n.Stalled || nodestate.Replacing(n.Phase, n.Agent)) {
			busy[grp] = true
		}
	}
	out := candidates[:0:0]
	held, closed := 0, map[string]bool{}
	for _, name := range candidates {
		grp := g.Of[name]
		switch {
		case grp == "" || g.Open[grp]:
			out = append(out, name)
		case busy[grp]:
			held++
			closed[grp] = true
		default:
			busy[grp] = true // this one is the group's next node: the rest wait for it
			out = append(out, name)
		}
	}
	if held == 0 {
		return out, ""
	}
	return out, fmt.Sprintf("%d nodes of %d groups wait for their group's first node to verify (one node at a time per group until one is verified and no failure awaits a second node's agreement)", held, len(closed))
}
