package selection

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

func TestClassifyFailure(t *testing.T) {
	for _, tc := range []struct {
		reason string
		want   FailureClass
	}{
		{"CheckFailed: 1 of 2 checks failed: ExeUpperLayer: reported lower layer", FailureKernel},
		{"SensorLoadFailed: load program: permission denied", FailureKernel},
		{"SensorAttachFailed", FailureKernel},
		{"DriverNotSupported: driver not supported by this sensor", FailureKernel},
		{"CheckTimedOut: ExeUpperLayer: no event within 5s", FailureTimeout},
		{"EventsDropped: 1 of 2 checks inconclusive", FailureInconclusive},
		{"SensorUnavailable: this agent runs Falco", FailureNodeLocal},
		{"ChecksNotApplicable: not an overlay", FailureNodeLocal},
		{"FalcoRestartTimedOut: Falco did not come back", FailureNodeLocal},
		{"IncompleteSelfTest: reported Passed without check ExeUpperLayer passing", FailureNodeLocal},
		{"Interrupted", FailureNodeLocal},
		{"InvalidInput: check requested twice", FailureNodeLocal},
		{"SensorConfigFailed: lower-layer request", FailureNodeLocal},
		{"SomethingNew: an agent reason nobody classified", FailureNodeLocal},
		{"", FailureNodeLocal},
	} {
		if got := ClassifyFailure(tc.reason); got != tc.want {
			t.Errorf("ClassifyFailure(%q) = %s, want %s", tc.reason, got, tc.want)
		}
	}
}

func TestLearn(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	fail := func(node string, d v1alpha1.Driver, attempt int32, reason string, s int) Evidence {
		return Evidence{Node: node, Driver: d, Attempt: attempt, Reason: reason, Time: at(s)}
	}
	pass := func(node string, d v1alpha1.Driver, attempt int32, s int) Evidence {
		return Evidence{Node: node, Driver: d, Attempt: attempt, Passed: true, Time: at(s)}
	}
	const m, e = v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF
	for _, tc := range []struct {
		name     string
		evidence []Evidence
		size     int
		forget   time.Time
		want     map[v1alpha1.Driver]v1alpha1.FleetVerdict
		from     map[v1alpha1.Driver]string // node the verdict was learned from
	}{
		{name: "small group: one failure of the kernel is the rule", size: 5,
			evidence: []Evidence{fail("a", m, 1, "CheckFailed: upper reported as lower", 1), pass("a", e, 2, 2)},
			want:     map[v1alpha1.Driver]v1alpha1.FleetVerdict{m: v1alpha1.FleetFails, e: v1alpha1.FleetWorks},
			from:     map[v1alpha1.Driver]string{m: "a", e: "a"}},
		{name: "large group: one failure awaits agreement", size: 50,
			evidence: []Evidence{fail("a", m, 1, "CheckFailed", 1), pass("a", e, 2, 2)},
			want:     map[v1alpha1.Driver]v1alpha1.FleetVerdict{m: v1alpha1.FleetAwaitingAgreement, e: v1alpha1.FleetWorks},
		},
		{name: "large group: two nodes agree", size: 50,
			evidence: []Evidence{fail("b", m, 1, "SensorLoadFailed", 5), fail("a", m, 1, "CheckFailed", 1)},
			want:     map[v1alpha1.Driver]v1alpha1.FleetVerdict{m: v1alpha1.FleetFails},
			from:     map[v1alpha1.Driver]string{m: "a"}},
		{name: "large group: one node failing twice is no agreement", size: 50,
			evidence: []Evidence{fail("a", m, 1, "CheckFailed", 1), fail("a", m, 3, "CheckFailed", 3)},
			want:     map[v1alpha1.Driver]v1alpha1.FleetVerdict{m: v1alpha1.FleetAwaitingAgreement}},
		{name: "a timeout is not shared", size: 5,
			evidence: []Evidence{fail("a", m, 1, "CheckTimedOut: no event within 5s", 1)},
			want:     map[v1alpha1.Driver]v1alpha1.FleetVerdict{m: v1alpha1.FleetUntested}},
		{name: "a node-local failure is not shared", size: 5,
			evidence: []Evidence{fail("a", m, 1, "SensorUnavailable: runs Falco", 1), fail("b", m, 1, "FalcoRestartTimedOut", 1)},
			want:     map[v1alpha1.Driver]v1alpha1.FleetVerdict{m: v1alpha1.FleetUntested}},
		{name: "a pass overturns the failures", size: 50,
			evidence: []Evidence{fail("a", m, 1, "CheckFailed", 1), fail("b", m, 1, "CheckFailed", 2), pass("c", m, 1, 3)},
			want:     map[v1alpha1.Driver]v1alpha1.FleetVerdict{m: v1alpha1.FleetMixed}},
		{name: "failures before the reset are forgotten, standing passes are not", size: 5, forget: at(10),
			evidence: []Evidence{fail("a", m, 1, "CheckFailed", 1), fail("b", e, 1, "CheckFailed", 11), pass("c", v1alpha1.DriverKmod, 1, 2)},
			want:     map[v1alpha1.Driver]v1alpha1.FleetVerdict{e: v1alpha1.FleetFails, v1alpha1.DriverKmod: v1alpha1.FleetWorks}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := Learn(tc.evidence, tc.size, tc.forget)
			if len(g) != len(tc.want) {
				t.Fatalf("verdicts %v, want %v", g, tc.want)
			}
			for d, want := range tc.want {
				if g[d].Verdict != want {
					t.Errorf("%s: %s, want %s", d, g[d].Verdict, want)
				}
				if n := tc.from[d]; n != "" && g[d].From.Node != n {
					t.Errorf("%s learned from %s, want %s", d, g[d].From.Node, n)
				}
			}
		})
	}
}

func TestApplyLearned(t *testing.T) {
	const m, e, k = v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF, v1alpha1.DriverKmod
	key := GroupKey{KernelRelease: "5.10.219-208.866.amzn2.x86_64", Architecture: "amd64", Distro: "amzn 2", Sensor: "Falco 0.38.1"}
	pref := []v1alpha1.Driver{m, e, k}
	fails := DriverVerdict{Driver: m, Verdict: v1alpha1.FleetFails, Failed: 2,
		From: Evidence{Node: "node-a", Driver: m, Attempt: 1, Reason: "CheckFailed: ExeUpperLayer reported lower"}}
	for _, tc := range []struct {
		name      string
		d         Decision
		g         GroupVerdicts
		node      string
		want      []v1alpha1.Driver
		reasonHas string
	}{
		{name: "no verdicts: unchanged", d: Decision{Driver: m, Candidates: []v1alpha1.Driver{m, e}, Preference: pref},
			want: []v1alpha1.Driver{m, e}},
		{name: "learned failure skipped, naming node and attempt", d: Decision{Driver: m, Candidates: []v1alpha1.Driver{m, e}, Preference: pref},
			g: GroupVerdicts{m: fails}, node: "node-b", want: []v1alpha1.Driver{e},
			reasonHas: "learned from node node-a (attempt 1) and 1 more of its nodes"},
		{name: "the node the failure came from keeps its own reasons", d: Decision{Driver: e, Candidates: []v1alpha1.Driver{e}, Preference: pref},
			g: GroupVerdicts{m: fails}, node: "node-a", want: []v1alpha1.Driver{e}},
		{name: "awaiting agreement: still tried", d: Decision{Driver: m, Candidates: []v1alpha1.Driver{m, e}, Preference: pref},
			g: GroupVerdicts{m: {Driver: m, Verdict: v1alpha1.FleetAwaitingAgreement, Failed: 1, From: fails.From}}, node: "node-b",
			want: []v1alpha1.Driver{m, e}},
		{name: "every driver learned failed: none left", d: Decision{Driver: m, Candidates: []v1alpha1.Driver{m}, Preference: pref},
			g: GroupVerdicts{m: fails}, node: "node-b", want: nil},
		{name: "a pass settles a doubt: start with it", d: Decision{Driver: k, Candidates: []v1alpha1.Driver{k, m}, Unsure: []v1alpha1.Driver{m}, Preference: pref},
			g: GroupVerdicts{m: {Driver: m, Verdict: v1alpha1.FleetWorks, Passed: 3, From: Evidence{Node: "node-c", Attempt: 2, Passed: true}}}, node: "node-b",
			want: []v1alpha1.Driver{m, k}, reasonHas: "verified on 3 nodes of this node's group (first node node-c, attempt 2)"},
		{name: "a pass does not jump an untried preferred driver", d: Decision{Driver: m, Candidates: []v1alpha1.Driver{m, e}, Preference: pref},
			g: GroupVerdicts{e: {Driver: e, Verdict: v1alpha1.FleetWorks, Passed: 1}}, node: "node-b",
			want: []v1alpha1.Driver{m, e}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ApplyLearned(tc.d, tc.g, key, tc.node)
			if !slices.Equal(got.Candidates, tc.want) {
				t.Fatalf("candidates %v, want %v", got.Candidates, tc.want)
			}
			wantDriver := v1alpha1.Driver("")
			if len(tc.want) > 0 {
				wantDriver = tc.want[0]
			}
			if got.Driver != wantDriver {
				t.Errorf("driver %q, want %q", got.Driver, wantDriver)
			}
			if tc.reasonHas != "" {
				found := false
				for _, r := range got.Reasons {
					found = found || (r.Source == v1alpha1.ReasonSourceFleet && strings.Contains(r.Message, tc.reasonHas))
				}
				if !found {
					t.Errorf("no Fleet reason containing %q in %+v", tc.reasonHas, got.Reasons)
				}
			}
		})
	}
}

func TestKeyOf(t *testing.T) {
	f := v1alpha1.ProbeFacts{}
	if _, ok := KeyOf(f, "Builtin"); ok {
		t.Fatal("a node without a kernel release has a group")
	}
	f.Kernel.Release.Value, f.Kernel.Architecture.Value = "6.1.0-28-cloud-amd64", "amd64"
	f.Distro.ID, f.Distro.VersionID = "debian", "12"
	k, ok := KeyOf(f, SensorName(v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falcosecurity/falco:0.38.1"}, "0.2.0"))
	if !ok || k.String() != "6.1.0-28-cloud-amd64/amd64/debian 12/Falco 0.38.1" {
		t.Fatalf("key %q, %t", k, ok)
	}
	if s := SensorName(v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin}, "0.2.0"); s != "Builtin 0.2.0" {
		t.Fatalf("builtin sensor name %q", s)
	}
}
