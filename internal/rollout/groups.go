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
	// Open lists the groups one of whose nodes is verified under the current spec: their rest
	// may start. Until then a group verifies one node at a time.
	Open map[string]bool
	// Suspect lists the waiting nodes whose next driver failed on one node of their group and
	// awaits a second node's agreement: one such node of a group tries it at a time, open group
	// or not, so a driver that fails on the whole group costs it two attempts, not maxUnavailable.
	Suspect map[string]bool
	// Trying lists the nodes in flight with a driver that awaits agreement in their group.
	Trying map[string]bool
	// Released lists nodes in flight that no longer hold their group back (they keep their
	// rollout slot): they answered without proving anything (an inconclusive run, a verdict
	// for another boot), or have verified for too long. A first node that hangs must not stop
	// its group for good.
	Released map[string]bool
}

// gate keeps, of the candidates (in order), those their group lets start: of a closed group its
// first candidate, when none of its nodes verifies now; of an open group every candidate, but
// only one suspect node at a time. It says why candidates were held back, empty when none was.
func (g Groups) gate(nodes []nodestate.Node, candidates []string) ([]string, string) {
	if len(g.Of) == 0 {
		return candidates, ""
	}
	busy, trying := map[string]bool{}, map[string]bool{}
	for _, n := range nodes {
		grp := g.Of[n.Name]
		if grp == "" || g.Released[n.Name] || !(n.Phase.InFlight() || n.Stalled || nodestate.Replacing(n.Phase, n.Agent)) {
			continue
		}
		busy[grp] = true
		if g.Trying[n.Name] {
			trying[grp] = true
		}
	}
	out := candidates[:0:0]
	held, heldGroups := 0, map[string]bool{}
	for _, name := range candidates {
		grp := g.Of[name]
		switch {
		case grp == "":
			out = append(out, name)
		case !g.Open[grp] && busy[grp], g.Suspect[name] && trying[grp]:
			held++
			heldGroups[grp] = true
		default:
			// The group's next node: a closed group's only one, a suspect one alone.
			busy[grp] = true
			trying[grp] = trying[grp] || g.Suspect[name]
			out = append(out, name)
		}
	}
	if held == 0 {
		return out, ""
	}
	return out, fmt.Sprintf("%d nodes of %d groups wait for a node of their group: its first node to verify, or a second node to try a driver that failed on one (one node at a time)", held, len(heldGroups))
}
