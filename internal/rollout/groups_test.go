package rollout

import (
	"fmt"
	"testing"

	"github.com/driverpilot/driverpilot/internal/nodestate"
)

func TestDecideGroups(t *testing.T) {
	// n0..n5: n0-n2 in group A, n3-n4 in group B, n5 in no group (kernel unknown).
	of := map[string]string{"n0": "A", "n1": "A", "n2": "A", "n3": "B", "n4": "B"}
	cases := []struct {
		name     string
		nodes    []nodestate.Node
		open     map[string]bool
		canary   map[string]bool
		released map[string]bool
		suspect  map[string]bool
		trying   map[string]bool
		start    string
		blocked  bool
	}{
		{name: "a new group is met by one node, not maxUnavailable", nodes: nodes(q, q, q, q, q, q), start: "[n0 n3 n5]", blocked: true},
		{name: "a group whose first node verifies waits for it", nodes: nodes(v, q, q, q, q, q), start: "[n3 n5]", blocked: true},
		{name: "a failed attempt still holds its group", nodes: nodes(f, q, q, k, q, q), start: "[n4 n5]", blocked: true},
		{name: "an open group goes at maxUnavailable", nodes: nodes(k, q, q, q, q, q), open: map[string]bool{"A": true}, start: "[n1 n2 n3 n5]", blocked: true},
		{name: "a suspect node waits while another tries the driver", nodes: nodes(k, v, q, k, q, q),
			open: map[string]bool{"A": true, "B": true}, suspect: map[string]bool{"n2": true}, trying: map[string]bool{"n1": true},
			start: "[n4 n5]", blocked: true},
		{name: "one suspect at a time, the others of an open group go", nodes: nodes(k, q, q, k, q, q),
			open: map[string]bool{"A": true, "B": true}, suspect: map[string]bool{"n1": true, "n2": true, "n4": true},
			start: "[n1 n4 n5]", blocked: true},
		{name: "a node whose next driver is not suspect goes with its open group", nodes: nodes(k, v, q, k, q, q),
			open: map[string]bool{"A": true, "B": true}, trying: map[string]bool{"n1": true}, start: "[n2 n4 n5]"},
		{name: "a released first node no longer holds its group", nodes: nodes(v, q, q, v, q, q),
			released: map[string]bool{"n0": true}, start: "[n1 n5]", blocked: true},
		{name: "the user's canary is its group's first", nodes: nodes(q, q, q, q, q, q), canary: map[string]bool{"n2": true}, start: "[n2]", blocked: true},
		{name: "after the user's canary, each group's first", nodes: nodes(q, q, k, q, q, q), canary: map[string]bool{"n2": true},
			open: map[string]bool{"A": true}, start: "[n0 n1 n3 n5]", blocked: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Decide(Input{Nodes: tc.nodes, Canaries: tc.canary, MaxUnavailable: 10, Groups: Groups{Of: of, Open: tc.open, Released: tc.released, Suspect: tc.suspect, Trying: tc.trying}})
			if got := fmt.Sprint(p.Start); got != tc.start {
				t.Errorf("start %s, want %s (blocked %q)", got, tc.start, p.Blocked)
			}
			if (p.Blocked != "") != tc.blocked {
				t.Errorf("blocked %q, want blocked=%t", p.Blocked, tc.blocked)
			}
		})
	}
}
