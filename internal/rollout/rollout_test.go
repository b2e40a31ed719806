package rollout

import (
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/driverpilot/driverpilot/internal/nodestate"
)

func nodes(phases ...nodestate.Phase) []nodestate.Node {
	out := make([]nodestate.Node, len(phases))
	for i, p := range phases {
		out[i] = nodestate.Node{Name: fmt.Sprintf("n%d", i), Phase: p}
	}
	return out
}

const (
	q = nodestate.Queued
	v = nodestate.Verifying
	f = nodestate.AttemptFailed
	k = nodestate.Verified
	x = nodestate.NoSupportedDriver
	o = nodestate.Outdated
	r = nodestate.Reverify
	g = nodestate.Reverifying
)

func TestDecide(t *testing.T) {
	cases := []struct {
		name      string
		in        Input
		start     string
		inFlight  int
		paused    bool
		blockedOK bool
	}{
		{name: "fills free slots in name order", in: Input{Nodes: nodes(q, q, q, q), MaxUnavailable: 2}, start: "[n0 n1]"},
		{name: "in-flight nodes take slots", in: Input{Nodes: nodes(v, f, q, q), MaxUnavailable: 3}, start: "[n2]", inFlight: 2},
		{name: "no slot left", in: Input{Nodes: nodes(v, v, q), MaxUnavailable: 2}, start: "[]", inFlight: 2},
		{name: "verified and failed nodes take no slot", in: Input{Nodes: nodes(k, x, q), MaxUnavailable: 1}, start: "[n2]"},
		{name: "zero means one", in: Input{Nodes: nodes(q, q), MaxUnavailable: 0}, start: "[n0]"},
		{name: "canary first even when last by name", in: Input{Nodes: nodes(q, q, q), Canaries: map[string]bool{"n2": true}, MaxUnavailable: 3}, start: "[n2]", blockedOK: true},
		{name: "others wait while a canary verifies", in: Input{Nodes: nodes(q, v), Canaries: map[string]bool{"n1": true}, MaxUnavailable: 5}, start: "[]", inFlight: 1, blockedOK: true},
		{name: "others go once canaries are verified", in: Input{Nodes: nodes(q, k, q), Canaries: map[string]bool{"n1": true}, MaxUnavailable: 5}, start: "[n0 n2]"},
		{name: "a failed canary pauses the rollout", in: Input{Nodes: nodes(q, x), Canaries: map[string]bool{"n1": true}, MaxUnavailable: 5}, start: "[]", paused: true, blockedOK: true},
		{name: "a silent canary pauses the rollout",
			in:    Input{Nodes: []nodestate.Node{{Name: "n0", Phase: q}, {Name: "n1", Phase: nodestate.AwaitingProbe, Silent: true}}, Canaries: map[string]bool{"n1": true}, MaxUnavailable: 5},
			start: "[]", paused: true, blockedOK: true},
		{name: "a silent node that is no canary pauses nothing",
			in:    Input{Nodes: []nodestate.Node{{Name: "n0", Phase: q}, {Name: "n1", Phase: nodestate.HeartbeatExpired, Silent: true}}, MaxUnavailable: 5},
			start: "[n0]"},
		{name: "re-verification is paced like a rollout", in: Input{Nodes: nodes(r, r, g), MaxUnavailable: 2}, start: "[n0]", inFlight: 1},
		{name: "an outdated canary holds re-verification back", in: Input{Nodes: nodes(r, o), Canaries: map[string]bool{"n1": true}, MaxUnavailable: 5}, start: "[]", blockedOK: true},
		{name: "an outdated canary does not hold a first verification back", in: Input{Nodes: nodes(q, o), Canaries: map[string]bool{"n1": true}, MaxUnavailable: 5}, start: "[n0]"},
		{name: "the canary re-verifies first", in: Input{Nodes: nodes(r, r), Canaries: map[string]bool{"n1": true}, MaxUnavailable: 5}, start: "[n1]", blockedOK: true},
		{name: "a node that went silent while verifying keeps its slot",
			in:    Input{Nodes: []nodestate.Node{{Name: "n0", Phase: nodestate.HeartbeatExpired, Stalled: true}, {Name: "n1", Phase: q}}, MaxUnavailable: 1},
			start: "[]", inFlight: 1},
		{name: "a silent verified node takes no slot",
			in:    Input{Nodes: []nodestate.Node{{Name: "n0", Phase: nodestate.HeartbeatExpired}, {Name: "n1", Phase: q}}, MaxUnavailable: 1},
			start: "[n1]"},
		{name: "pause after failures", in: Input{Nodes: nodes(x, x, q), MaxUnavailable: 5, PauseOnFailures: 2}, start: "[]", paused: true, blockedOK: true},
		{name: "below the pause threshold", in: Input{Nodes: nodes(x, q), MaxUnavailable: 5, PauseOnFailures: 2}, start: "[n1]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Decide(tc.in)
			if got := fmt.Sprint(p.Start); got != tc.start && !(tc.start == "[]" && len(p.Start) == 0) {
				t.Errorf("start %v, want %s", p.Start, tc.start)
			}
			if p.InFlight != tc.inFlight {
				t.Errorf("in flight %d, want %d", p.InFlight, tc.inFlight)
			}
			if p.Paused != tc.paused {
				t.Errorf("paused %v, want %v", p.Paused, tc.paused)
			}
			if (p.Blocked != "") != tc.blockedOK {
				t.Errorf("blocked %q, want a reason: %v", p.Blocked, tc.blockedOK)
			}
		})
	}
}

func TestCanaryPauseNamesTheCanaryAndHowToContinue(t *testing.T) {
	p := Decide(Input{Nodes: nodes(q, x), Canaries: map[string]bool{"n1": true}, MaxUnavailable: 5})
	if p.Reason != ReasonCanaryFailed || !strings.Contains(p.Blocked, "n1") || !strings.Contains(p.Blocked, "spec.rollout.canary") {
		t.Errorf("pause %s: %q does not name the canary and how to continue", p.Reason, p.Blocked)
	}
	p = Decide(Input{Nodes: []nodestate.Node{{Name: "n0", Phase: q}, {Name: "n1", Phase: nodestate.HeartbeatExpired, Silent: true}},
		Canaries: map[string]bool{"n1": true}, MaxUnavailable: 5})
	if p.Reason != ReasonCanarySilent || !strings.Contains(p.Blocked, "n1") {
		t.Errorf("pause %s: %q", p.Reason, p.Blocked)
	}
}

func TestChooseCanaries(t *testing.T) {
	cases := []struct {
		name     string
		governed []string
		matched  map[string]bool
		count    int
		recorded []string
		want     string
	}{
		{name: "first by name", governed: []string{"b", "c", "a"}, count: 1, want: "[a]"},
		{name: "a new node sorting first does not take the slot", governed: []string{"a", "b", "c"}, count: 1, recorded: []string{"b"}, want: "[b]"},
		{name: "a canary that left is replaced", governed: []string{"a", "c"}, count: 1, recorded: []string{"b"}, want: "[a]"},
		{name: "a bigger count fills up", governed: []string{"a", "b", "c"}, count: 2, recorded: []string{"c"}, want: "[a c]"},
		{name: "a smaller count keeps the recorded first", governed: []string{"a", "b", "c"}, count: 1, recorded: []string{"c", "b"}, want: "[c]"},
		{name: "selector matches come on top of the count", governed: []string{"a", "b", "c"}, matched: map[string]bool{"c": true}, count: 1, recorded: []string{"a"}, want: "[a c]"},
		{name: "selector only", governed: []string{"a", "b", "c"}, matched: map[string]bool{"b": true}, recorded: []string{"a"}, want: "[b]"},
	}
	for _, tc := range cases {
		if got := fmt.Sprint(ChooseCanaries(tc.governed, tc.matched, tc.count, tc.recorded)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestResolveMaxUnavailable(t *testing.T) {
	cases := []struct {
		v        *intstr.IntOrString
		selected int
		want     int
	}{
		{nil, 10, 1},
		{ptr(intstr.FromInt32(3)), 10, 3},
		{ptr(intstr.FromString("10%")), 1000, 100},
		{ptr(intstr.FromString("10%")), 5, 1},  // rounded up
		{ptr(intstr.FromString("25%")), 10, 3}, // 2.5 rounds up
		{ptr(intstr.FromString("1%")), 0, 1},   // never below one
		{ptr(intstr.FromString("100%")), 7, 7},
	}
	for _, tc := range cases {
		got, err := ResolveMaxUnavailable(tc.v, tc.selected)
		if err != nil || got != tc.want {
			t.Errorf("ResolveMaxUnavailable(%v, %d) = %d, %v; want %d", tc.v, tc.selected, got, err, tc.want)
		}
	}
	if _, err := ResolveMaxUnavailable(ptr(intstr.FromString("half")), 10); err == nil {
		t.Error("a value that is neither a count nor a percentage must be an error")
	}
}

func ptr[T any](v T) *T { return &v }

// TestDecideReplacesAgentPods: a new agent pod template reaches proven nodes paced like a
// rollout (canary first, within maxUnavailable, a replaced node holding its slot until it is
// verified again); nodes that are not protected get a new pod at once; a current pod costs nothing.
func TestDecideReplacesAgentPods(t *testing.T) {
	const (
		cur  = nodestate.AgentCurrent
		old  = nodestate.AgentOutdated
		term = nodestate.AgentTerminating
		gone = nodestate.AgentReplaced
	)
	type n struct {
		phase nodestate.Phase
		agent nodestate.AgentPod
	}
	in := func(maxUnavailable int, canary string, ns ...n) Input {
		out := Input{MaxUnavailable: maxUnavailable, Canaries: map[string]bool{}}
		for i, x := range ns {
			out.Nodes = append(out.Nodes, nodestate.Node{Name: fmt.Sprintf("n%d", i), Phase: x.phase, Agent: x.agent})
		}
		if canary != "" {
			out.Canaries[canary] = true
		}
		return out
	}
	cases := []struct {
		name           string
		in             Input
		start, replace string
		inFlight       int
		paused         bool
	}{
		{name: "a current template replaces nothing", in: in(2, "", n{k, cur}, n{k, cur}, n{q, cur}), start: "[n2]", replace: "[]"},
		{name: "proven nodes are replaced within maxUnavailable", in: in(2, "", n{k, old}, n{k, old}, n{k, old}), start: "[]", replace: "[n0 n1]"},
		{name: "the canary is replaced first", in: in(3, "n2", n{k, old}, n{k, old}, n{k, old}), start: "[]", replace: "[n2]"},
		{name: "others wait while the canary's pod terminates", in: in(3, "n2", n{k, old}, n{k, old}, n{k, term}), start: "[]", replace: "[]", inFlight: 1},
		{name: "a replaced node gets its new attempt and keeps its slot", in: in(1, "n2", n{k, old}, n{k, old}, n{k, gone}), start: "[n2]", replace: "[]", inFlight: 1},
		{name: "others wait until the canary is verified under the new template", in: in(3, "n2", n{k, old}, n{r, old}, n{g, cur}), start: "[]", replace: "[]", inFlight: 1},
		{name: "others go once the canary is verified under the new template", in: in(1, "n2", n{k, old}, n{r, old}, n{k, cur}), start: "[]", replace: "[n0]"},
		{name: "a terminating pod holds a slot", in: in(2, "", n{k, term}, n{k, old}, n{o, old}), start: "[]", replace: "[n1]", inFlight: 1},
		{name: "a node re-verifying finishes first", in: in(2, "", n{g, old}, n{k, old}), start: "[]", replace: "[n1]", inFlight: 1},
		{name: "nodes not protected are replaced at once, slots or not",
			in: in(1, "", n{v, old}, n{q, old}, n{x, old}, n{nodestate.AwaitingProbe, old}, n{nodestate.SensorUnavailable, old}, n{k, old}), start: "[]", replace: "[n0 n1 n2 n3 n4]", inFlight: 2},
		{name: "a silent node's pod is replaced at once", in: in(1, "", n{nodestate.HeartbeatExpired, old}, n{k, cur}, n{k, cur}), start: "[]", replace: "[n0]"},
		{name: "in a brownout no silent node's pod is replaced",
			in: in(1, "", n{nodestate.HeartbeatExpired, old}, n{nodestate.HeartbeatExpired, old}, n{nodestate.HeartbeatExpired, old}, n{k, old}), start: "[]", replace: "[n3]"},
		{name: "an outdated proof by an older agent is replaced paced", in: in(1, "", n{o, old}, n{o, old}), start: "[]", replace: "[n0]"},
		{name: "a paused rollout replaces no proven pod but finishes a replaced one",
			in: in(5, "n0", n{x, cur}, n{k, old}, n{k, gone}, n{q, old}), start: "[n2]", replace: "[n3]", inFlight: 1, paused: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Decide(tc.in)
			if got := fmt.Sprint(p.Start); got != tc.start && !(tc.start == "[]" && len(p.Start) == 0) {
				t.Errorf("start %v, want %s", p.Start, tc.start)
			}
			if got := fmt.Sprint(p.Replace); got != tc.replace && !(tc.replace == "[]" && len(p.Replace) == 0) {
				t.Errorf("replace %v, want %s", p.Replace, tc.replace)
			}
			if p.InFlight != tc.inFlight {
				t.Errorf("in flight %d, want %d", p.InFlight, tc.inFlight)
			}
			if p.Paused != tc.paused {
				t.Errorf("paused %v, want %v", p.Paused, tc.paused)
			}
		})
	}
}
