package fault

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/scheme"
	"github.com/driverpilot/driverpilot/internal/simagent"
	"github.com/driverpilot/driverpilot/internal/version"
)

const (
	nodeCount      = 60
	maxUnavailable = 3
	label          = "driverpilot.io/fault-suite"
	namespace      = "driverpilot-system"
	profileName    = "fault"
	markerName     = "fault-suite-marker"
	// heartbeatTimeout is the manager's; the agents beat every second.
	heartbeatTimeout = 10 * time.Second
	selfTestDelay    = 1500 * time.Millisecond
	// grace is how long a node may stay True after its NodeSensor stopped proving it (the
	// manager's reaction time).
	grace = 10 * time.Second
	// recover bounds each wait for the loop to reconverge after a fault.
	recover = 45 * time.Second
)

// row is one line of the fault table.
type row struct {
	fault, did, reconverge string
	broken                 []string // what failed beyond the watched invariants
}

// suite is the running world: control plane, manager process, simulated agents, watcher.
type suite struct {
	t       *testing.T
	ctx     context.Context
	cl      *cluster
	mgr     *manager
	fleet   *simagent.Fleet
	w       *watcher
	rows    []row
	verdict sync.Map // node → func(honest *SelfTestStatus) *SelfTestStatus, used once
	touched map[string]bool
}

func TestFaultsDuringRollout(t *testing.T) {
	root := repoRoot(t)
	start := time.Now()
	log.SetLogger(logr.Discard())
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	binDir := t.TempDir()
	built := make(chan error, 1)
	var bin string
	go func() {
		var err error
		bin, err = buildDriverpilot(root, binDir)
		built <- err
	}()
	cl := startCluster(t, root)
	if err := <-built; err != nil {
		t.Fatal(err)
	}
	if err := cl.client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
		t.Fatal(err)
	}
	names := make([]string, nodeCount)
	for i := range names {
		names[i] = fmt.Sprintf("fault-%02d", i)
		if err := cl.client.Create(ctx, newNode(names[i])); err != nil {
			t.Fatal(err)
		}
	}
	// Markers no profile selects: the suite writes them to know when the watcher has caught up.
	if err := cl.client.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: markerName}}); err != nil {
		t.Fatal(err)
	}
	if err := cl.client.Create(ctx, &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: markerName}, Spec: v1alpha1.NodeSensorSpec{Profile: markerName}}); err != nil {
		t.Fatal(err)
	}
	s := &suite{t: t, ctx: ctx, cl: cl, touched: map[string]bool{}}
	s.w = startWatcher(ctx, t, cl.config, label, maxUnavailable, grace)

	_, agentCfg := cl.kubeconfig(t, "driverpilot-fault-agents")
	fleet, err := simagent.Start(ctx, agentCfg, scheme.New(), names, simagent.Options{
		SelfTestDelay: selfTestDelay, Heartbeat: time.Second, Workers: 8, AgentVersion: version.Version,
		OnWrite: s.w.observeWrite,
		Verdict: func(node string, _ v1alpha1.NodeSensorSpec, honest *v1alpha1.SelfTestStatus) *v1alpha1.SelfTestStatus {
			if f, ok := s.verdict.LoadAndDelete(node); ok {
				return f.(func(*v1alpha1.SelfTestStatus) *v1alpha1.SelfTestStatus)(honest)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.fleet = fleet

	mgrKubeconfig, _ := cl.kubeconfig(t, "driverpilot-fault-manager")
	s.mgr = newManager(t, bin, mgrKubeconfig, "--metrics-bind-address=0", "--health-probe-bind-address=0",
		"--namespace="+namespace, "--leader-elect=false", "--heartbeat-timeout="+heartbeatTimeout.String())
	if err := s.mgr.start(ctx); err != nil {
		t.Fatal(err)
	}
	profile := &v1alpha1.SecurityProfile{
		ObjectMeta: metav1.ObjectMeta{Name: profileName},
		Spec: v1alpha1.SecurityProfileSpec{
			NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{label: "true"}},
			Rollout: v1alpha1.RolloutSpec{
				Canary:         &v1alpha1.CanarySpec{Count: ptr.To[int32](1)},
				MaxUnavailable: ptr.To(intstr.FromInt32(maxUnavailable)),
			},
			Enforcement: v1alpha1.EnforcementSpec{Taint: true},
		},
	}
	if err := cl.client.Create(ctx, profile); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	t.Logf("setup %.1fs; rollout of %d nodes started (maxUnavailable %d, one canary, taint, self-test %s, heartbeat timeout %s)",
		t0.Sub(start).Seconds(), nodeCount, maxUnavailable, selfTestDelay, heartbeatTimeout)

	// The rollout gets past its canary before the first fault.
	s.waitFor("4 nodes verified", time.Minute, func() (bool, string) {
		st := s.w.snapshot()
		return st.verified >= 4, fmt.Sprintf("%d verified", st.verified)
	})

	// The table and the broken invariants are reported even when a fault stops the run early.
	defer func() {
		s.printTable(time.Since(start))
		for _, v := range s.w.allViolations() {
			t.Errorf("invariant %q broken during %q at t+%.1fs: %s", v.kind, v.phase, v.at.Seconds(), v.msg)
		}
		if t.Failed() {
			s.logStories()
			t.Logf("manager log (end):\n%s", s.mgr.tail(4000))
		}
	}()
	s.managerKilled()
	s.apiServerRestarted()
	s.nodeDeleted()
	s.nodeSensorDeleted()
	s.verifyingAgentsSilent()
	s.brownout()
	s.hostileStatuses()
	s.final(profile, t0)
}

// logStories logs, for every node an invariant names, what happened to it from the start.
func (s *suite) logStories() {
	seen := map[string]bool{}
	for _, v := range s.w.allViolations() {
		for _, f := range strings.FieldsFunc(v.msg, func(r rune) bool { return r == ' ' || r == ',' || r == ':' }) {
			if strings.HasPrefix(f, "fault-") && !seen[f] {
				seen[f] = true
				s.t.Logf("story of %s: %s", f, s.w.fullStory(f))
			}
		}
	}
}

func newNode(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{label: "true"}}}
}

// syncWatcher writes the markers and waits until the watcher has seen both writes: after an API
// outage its watches re-connect with a back-off, and a phase must not judge a stale view.
func (s *suite) syncWatcher() {
	s.t.Helper()
	var nodeRV, sensorRV uint64
	s.waitFor("markers written", recover, func() (bool, string) {
		stamp := map[string]any{"metadata": map[string]any{"annotations": map[string]string{"fault-suite/stamp": time.Now().Format(time.RFC3339Nano)}}}
		raw, _ := json.Marshal(stamp)
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: markerName}}
		if err := s.cl.client.Patch(s.ctx, n, client.RawPatch(types.MergePatchType, raw)); err != nil {
			return false, err.Error()
		}
		ns := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: markerName}}
		if err := s.cl.client.Patch(s.ctx, ns, client.RawPatch(types.MergePatchType, raw)); err != nil {
			return false, err.Error()
		}
		nodeRV, sensorRV = rvOf(n.ResourceVersion), rvOf(ns.ResourceVersion)
		return true, ""
	})
	s.waitFor("watcher caught up", recover, func() (bool, string) {
		return s.w.caughtUp(nodeRV, sensorRV), fmt.Sprintf("waiting for node rv %d, sensor rv %d", nodeRV, sensorRV)
	})
}

// waitFor polls cond until it holds; on timeout it fails the test (and goes on) and returns false.
func (s *suite) waitFor(what string, limit time.Duration, cond func() (bool, string)) bool {
	s.t.Helper()
	deadline := time.Now().Add(limit)
	var last string
	for time.Now().Before(deadline) && s.ctx.Err() == nil {
		var ok bool
		if ok, last = cond(); ok {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Errorf("%s: not reached within %s: %s", what, limit, last)
	return false
}

// settle waits until the rollout made progress since a count of verified nodes (or is complete)
// and every node in want is True again; it returns how long that took from since.
func (s *suite) settle(what string, since time.Time, verifiedBefore int, want []string) string {
	s.syncWatcher()
	ok := s.waitFor(what, recover, func() (bool, string) {
		st := s.w.snapshot()
		var missing []string
		for _, n := range want {
			if !s.w.isTrue(n) {
				missing = append(missing, n)
			}
		}
		progressed := st.verified > verifiedBefore || len(st.notConverged) == 0
		return progressed && len(missing) == 0, fmt.Sprintf("%d verified (before %d), not True again: %s; not converged: %s",
			st.verified, verifiedBefore, short(missing), short(st.notConverged))
	})
	if !ok {
		return fmt.Sprintf("NOT within %s", recover)
	}
	return fmt.Sprintf("%.1fs", time.Since(since).Seconds())
}

func short(list []string) string {
	if len(list) > 4 {
		return strings.Join(list[:4], ", ") + fmt.Sprintf(" and %d more", len(list)-4)
	}
	return strings.Join(list, ", ")
}

// record adds a table row with the invariant results of the phase.
func (s *suite) record(fault, did, reconverge string, broken ...string) {
	r := row{fault: fault, did: did, reconverge: reconverge, broken: broken}
	s.rows = append(s.rows, r)
	s.t.Logf("fault %q: %s | invariants so far %s | reconverged %s", fault, did, s.invariants(r), reconverge)
}

// invariants sums up a row's broken invariants; called again for the table, as a start is
// judged a few seconds after it happened.
func (s *suite) invariants(r row) string {
	vs := s.w.violationsIn(r.fault)
	if len(vs) == 0 && len(r.broken) == 0 {
		return "ok"
	}
	kinds := map[string]int{}
	var order []string
	for _, v := range vs {
		if kinds[v.kind] == 0 {
			order = append(order, v.kind)
		}
		kinds[v.kind]++
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, kinds[k]))
	}
	return "BROKEN: " + strings.Join(append(parts, r.broken...), ", ")
}

func (s *suite) managerKilled() {
	const name = "manager SIGKILL + restart"
	s.w.setPhase(name)
	s.syncWatcher()
	before := s.w.snapshot()
	at := time.Now()
	s.mgr.kill()
	time.Sleep(time.Second)
	if err := s.mgr.start(s.ctx); err != nil {
		s.t.Errorf("restart manager: %v", err)
	}
	up := time.Since(at)
	took := s.settle(name, at, before.verified, before.verifiedNodes)
	s.record(name, fmt.Sprintf("killed with %d verified, %d verifying (%s); restarted, workers up after %.1fs; rollout went on",
		before.verified, before.inFlight, short(before.verifyingNodes), up.Seconds()), took)
}

func (s *suite) apiServerRestarted() {
	const name = "API server restart"
	s.w.setPhase(name)
	s.syncWatcher()
	before := s.w.snapshot()
	at := time.Now()
	s.w.beginBrownout() // an API outage is a brownout for the heartbeats, too
	killed, down, err := s.cl.restartAPIServer(3*time.Second, time.Second)
	if err != nil {
		s.t.Fatalf("%s: %v", name, err)
	}
	time.Sleep(2 * time.Second)
	alive := "kept running"
	if !s.mgr.running() {
		alive = "EXITED (restarted by the suite)"
		s.t.Errorf("the manager exited when the API server restarted:\n%s", s.mgr.tail(3000))
		if err := s.mgr.start(s.ctx); err != nil {
			s.t.Fatalf("restart manager: %v", err)
		}
	}
	took := s.settle(name, at, before.verified, before.verifiedNodes)
	s.w.endBrownout()
	how := "stopped (SIGTERM)"
	if killed {
		how = "SIGTERM, SIGKILL after 3s"
	}
	s.record(name, fmt.Sprintf("API server %s, down %.1fs with %d verified, %d verifying; the manager %s; %d nodes went Unknown, %d tainted meanwhile",
		how, down.Seconds(), before.verified, before.inFlight, alive, s.w.countSince(at, "Unknown/"), s.w.taintedSince(at)), took)
}

func (s *suite) nodeDeleted() {
	const name = "Node deleted (then re-registered)"
	s.w.setPhase(name)
	s.syncWatcher()
	before := s.w.snapshot()
	victim, was := s.untouched(before.verifyingNodes), "verifying"
	if victim == "" {
		victim, was = s.untouched(before.verifiedNodes), "verified"
	}
	at := time.Now()
	s.w.leave(victim, true)
	s.fleet.Remove(victim)
	if err := s.cl.client.Delete(s.ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: victim}}); err != nil {
		s.t.Fatalf("delete node %s: %v", victim, err)
	}
	gone := s.waitFor("NodeSensor of the deleted node removed", recover, func() (bool, string) {
		return s.w.sensor(victim) == nil, "NodeSensor still there"
	})
	removed := time.Since(at)
	// The node comes back under the same name: a replaced machine, a new boot.
	s.w.leave(victim, false)
	if err := s.cl.client.Create(s.ctx, newNode(victim)); err != nil {
		s.t.Fatalf("re-create node %s: %v", victim, err)
	}
	s.fleet.Add(victim, "boot-"+victim+"-replaced")
	want := append([]string{victim}, without(before.verifiedNodes, victim)...)
	took := s.settle(name, at, before.verified-1, want)
	did := fmt.Sprintf("deleted %s while %s", victim, was)
	if gone {
		did += fmt.Sprintf("; its NodeSensor removed after %.1fs", removed.Seconds())
	}
	ns := s.w.sensor(victim)
	if ns != nil {
		did += fmt.Sprintf("; re-registered node verified with %s (attempt %d)", ns.Spec.Driver, ns.Spec.Attempt)
	}
	s.record(name, did+"; "+s.w.story(victim, at), took)
}

// untouched returns the first node of list no fault has touched yet, and marks it touched.
func (s *suite) untouched(list []string) string {
	for _, n := range list {
		if !s.touched[n] {
			s.touched[n] = true
			return n
		}
	}
	return ""
}

func without(list []string, x string) []string {
	var out []string
	for _, v := range list {
		if v != x {
			out = append(out, v)
		}
	}
	return out
}

func (s *suite) nodeSensorDeleted() {
	const name = "NodeSensor deleted"
	s.w.setPhase(name)
	s.syncWatcher()
	before := s.w.snapshot()
	victim := s.untouched(before.verifiedNodes)
	old := s.w.sensor(victim)
	at := time.Now()
	if err := s.cl.client.Delete(s.ctx, &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: victim}}); err != nil {
		s.t.Fatalf("delete node sensor %s: %v", victim, err)
	}
	s.waitFor("the deletion seen", recover, func() (bool, string) {
		ns := s.w.sensor(victim)
		return ns == nil || ns.UID != old.UID, "NodeSensor unchanged"
	})
	took := s.settle(name, at, before.verified-1, before.verifiedNodes)
	did := fmt.Sprintf("deleted the NodeSensor of verified %s", victim)
	if ns := s.w.sensor(victim); ns != nil && old != nil && ns.UID != old.UID {
		did += fmt.Sprintf("; recreated, facts re-reported, verified again with %s", ns.Spec.Driver)
	}
	s.record(name, did+"; "+s.w.story(victim, at), took)
}

// verifyingAgentsSilent stops the agents of the nodes verifying now (their pods hang in the
// self-test) for longer than the heartbeat timeout, while every other agent goes on: the stalled
// nodes keep their rollout slots, so the manager may start no other node meanwhile.
func (s *suite) verifyingAgentsSilent() {
	const name = "agents of the verifying nodes silent"
	s.w.setPhase(name)
	s.waitFor("nodes verifying", recover, func() (bool, string) {
		st := s.w.snapshot()
		return len(st.verifyingNodes) > 0 || len(st.notConverged) == 0, "none verifying"
	})
	s.syncWatcher()
	before := s.w.snapshot()
	var silent []string
	for _, n := range before.verifyingNodes {
		if !s.touched[n] {
			s.touched[n] = true
			silent = append(silent, n)
		}
	}
	at := time.Now()
	for _, n := range silent {
		s.fleet.SilenceNode(n, true)
	}
	time.Sleep(heartbeatTimeout + 5*time.Second)
	started := s.w.countSince(at, "attempt ")
	for _, n := range silent {
		s.fleet.SilenceNode(n, false)
	}
	took := s.settle(name, at, before.verified, append(slices.Clone(before.verifiedNodes), silent...))
	s.record(name, fmt.Sprintf("silenced %s while verifying (%d verified); %d went Unknown/HeartbeatExpired; %d attempts started while they were silent; all verified after they came back",
		short(silent), before.verified, s.w.countSince(at, "Unknown/HeartbeatExpired"), started), took)
}

func (s *suite) brownout() {
	const name = "brownout: every agent silent"
	s.w.setPhase(name)
	s.syncWatcher()
	before := s.w.snapshot()
	silence := heartbeatTimeout + 4*time.Second
	at := time.Now()
	said := s.watchProfile(profileName)
	s.w.beginBrownout()
	s.fleet.Silence(true)
	time.Sleep(silence)
	s.fleet.Silence(false)
	back := time.Now()
	took := s.settle(name, back, before.verified, before.verifiedNodes)
	time.Sleep(time.Second) // a taint written late still counts
	s.w.endBrownout()
	s.record(name, fmt.Sprintf("agents silent %s (heartbeat timeout %s) with %d verified, %d verifying; %d nodes went Unknown/HeartbeatExpired, %d tainted; the profile said: %s",
		silence, heartbeatTimeout, before.verified, before.inFlight, s.w.countSince(at, "Unknown/HeartbeatExpired"), s.w.taintedSince(at), said()), took)
}

// watchProfile polls the profile's conditions until the returned function is called, which
// returns the conditions that appeared meanwhile (type=status/reason).
func (s *suite) watchProfile(name string) func() string {
	conds := func() []string {
		p := &v1alpha1.SecurityProfile{}
		if err := s.cl.client.Get(s.ctx, client.ObjectKey{Name: name}, p); err != nil {
			return nil
		}
		var out []string
		for _, c := range p.Status.Conditions {
			out = append(out, fmt.Sprintf("%s=%s/%s", c.Type, c.Status, c.Reason))
		}
		return out
	}
	initial := conds()
	var mu sync.Mutex
	var seen []string
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			for _, c := range conds() {
				mu.Lock()
				if !slices.Contains(initial, c) && !slices.Contains(seen, c) {
					seen = append(seen, c)
				}
				mu.Unlock()
			}
			select {
			case <-done:
				return
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()
	return func() string {
		close(done)
		<-stopped
		if len(seen) == 0 {
			return "no new condition"
		}
		return strings.Join(seen, ", ")
	}
}

// hostile is one hostile status an agent writes to a verified node's NodeSensor.
type hostile struct {
	name string
	// status changes the node's status; facts, when set, replace the probe (it re-probes).
	status func(ns *v1alpha1.NodeSensor)
	facts  func(bootID string) *v1alpha1.ProbeFacts
	// fail, with facts, turns the agent's next verdict (after it re-probed) into a failure.
	fail func(honest *v1alpha1.SelfTestStatus) *v1alpha1.SelfTestStatus
}

// timedOut is the verdict of a self-test whose upper-layer event never came.
func timedOut(honest *v1alpha1.SelfTestStatus) *v1alpha1.SelfTestStatus {
	honest.Result, honest.Reason, honest.Message = v1alpha1.SelfTestFailed, "CheckTimedOut", "ExeUpperLayer: no event within 10s"
	honest.Checks[0].Result = v1alpha1.SelfTestFailed
	return honest
}

func hostiles() []hostile {
	passed := func(change func(st *v1alpha1.SelfTestStatus, spec v1alpha1.NodeSensorSpec)) func(ns *v1alpha1.NodeSensor) {
		return func(ns *v1alpha1.NodeSensor) {
			st := simagent.Honest(ns.Spec, ns.Status.Probe.Kernel.BootID.Value, version.Version, time.Now())
			change(st, ns.Spec)
			ns.Status.SelfTest = st
		}
	}
	longRelease := "6.1.0-28-cloud-amd64-" + strings.Repeat("x", 300)
	return []hostile{
		{name: "Passed without checks", status: passed(func(st *v1alpha1.SelfTestStatus, _ v1alpha1.NodeSensorSpec) { st.Checks = nil })},
		{name: "Passed without ExeUpperLayer", status: passed(func(st *v1alpha1.SelfTestStatus, _ v1alpha1.NodeSensorSpec) {
			st.Checks = st.Checks[1:]
		})},
		{name: "Passed with ExeUpperLayer Failed", status: passed(func(st *v1alpha1.SelfTestStatus, _ v1alpha1.NodeSensorSpec) {
			st.Checks[0].Result, st.Checks[0].Observed = v1alpha1.SelfTestFailed, "no event within 10s"
		})},
		{name: "Passed with another boot ID", status: passed(func(st *v1alpha1.SelfTestStatus, _ v1alpha1.NodeSensorSpec) { st.BootID = "another-boot" })},
		{name: "Passed with an empty boot ID", status: passed(func(st *v1alpha1.SelfTestStatus, _ v1alpha1.NodeSensorSpec) { st.BootID = "" })},
		{name: "Passed for the attempt before (never proven)", status: passed(func(st *v1alpha1.SelfTestStatus, spec v1alpha1.NodeSensorSpec) { st.Attempt = spec.Attempt - 1 })},
		{name: "Passed for the next attempt", status: passed(func(st *v1alpha1.SelfTestStatus, spec v1alpha1.NodeSensorSpec) { st.Attempt = spec.Attempt + 1 })},
		{name: "Passed for another driver", status: passed(func(st *v1alpha1.SelfTestStatus, spec v1alpha1.NodeSensorSpec) {
			st.Driver = v1alpha1.DriverKmod
			if spec.Driver == v1alpha1.DriverKmod {
				st.Driver = v1alpha1.DriverEBPF
			}
		})},
		{name: "Failed with a 1 MiB self-test message", status: func(ns *v1alpha1.NodeSensor) {
			st := simagent.Honest(ns.Spec, ns.Status.Probe.Kernel.BootID.Value, version.Version, time.Now())
			st.Result, st.Reason, st.Message = v1alpha1.SelfTestFailed, "CheckFailed", strings.Repeat("m", 1<<20)
			ns.Status.SelfTest = st
		}},
		{name: "Failed with a 512 KiB check message and a 2 KiB reason", status: func(ns *v1alpha1.NodeSensor) {
			st := simagent.Honest(ns.Spec, ns.Status.Probe.Kernel.BootID.Value, version.Version, time.Now())
			st.Result, st.Reason, st.Message = v1alpha1.SelfTestFailed, "Check"+strings.Repeat("Failed", 340), strings.Repeat("m", 4096)
			st.Checks[0].Result, st.Checks[0].Message = v1alpha1.SelfTestFailed, strings.Repeat("c", 512<<10)
			ns.Status.SelfTest = st
		}},
		{name: "kernelRelease of 321 chars, then a failed self-test", fail: timedOut, facts: func(bootID string) *v1alpha1.ProbeFacts {
			f := simagent.TypicalFacts(bootID)
			f.Kernel.Release.Value = longRelease
			return f
		}},
		{name: "every string at its schema bound, then a failed self-test", facts: func(bootID string) *v1alpha1.ProbeFacts {
			f := simagent.TypicalFacts(bootID)
			f.Kernel.Release.Value = "6.1.0-28-cloud-amd64-" + strings.Repeat("r", 256-21)
			f.Distro.PrettyName = strings.Repeat("p", 256)
			f.Lockdown.Error = strings.Repeat("e", 1024)
			return f
		}, fail: func(honest *v1alpha1.SelfTestStatus) *v1alpha1.SelfTestStatus {
			honest.Result, honest.Reason, honest.Message = v1alpha1.SelfTestFailed, "Check"+strings.Repeat("Failed", 20)+"Now", strings.Repeat("m", 4096)
			honest.Checks[0].Result, honest.Checks[0].Observed = v1alpha1.SelfTestFailed, strings.Repeat("o", 1024)
			honest.Checks[0].Message = strings.Repeat("c", 1024)
			return honest
		}},
	}
}

// hostileStatuses writes each hostile status to its own verified node, with the agents'
// identity, holds it longer than the grace, then lets an honest agent take over (a restart).
func (s *suite) hostileStatuses() {
	hs := hostiles()
	s.waitFor("enough verified nodes for the hostile statuses", recover, func() (bool, string) {
		st := s.w.snapshot()
		return st.verified >= len(hs)+8, fmt.Sprintf("%d verified", st.verified)
	})
	s.syncWatcher()
	before := s.w.snapshot()
	var victims []string
	for range hs {
		v := s.untouched(before.verifiedNodes)
		if v == "" {
			s.t.Fatalf("not enough verified nodes for the hostile statuses: %d", before.verified)
		}
		victims = append(victims, v)
	}
	type outcome struct {
		refused error
		at      time.Time
	}
	outcomes := make([]outcome, len(hs))
	injected := time.Now()
	for i, h := range hs {
		node := victims[i]
		s.w.setNodePhase(node, "hostile: "+h.name)
		outcomes[i].at = time.Now()
		if h.facts != nil {
			// Would the API take it? Ask without writing, so a refused probe does not wedge the agent.
			ns := s.w.sensor(node)
			base := ns.DeepCopy()
			ns.Status.Probe = h.facts(ns.Status.Probe.Kernel.BootID.Value)
			ns.Status.SelfTest = h.fail(simagent.Honest(ns.Spec, ns.Status.Probe.Kernel.BootID.Value, version.Version, time.Now()))
			if err := s.fleet.Client().Status().Patch(s.ctx, ns, client.MergeFrom(base), client.DryRunAll); err != nil {
				outcomes[i].refused = err
				continue
			}
			s.verdict.Store(node, h.fail)
			s.fleet.SetFacts(node, h.facts)
			s.fleet.Restart(node)
			continue
		}
		ns := s.w.sensor(node)
		base := ns.DeepCopy()
		h.status(ns)
		now := metav1.Now()
		ns.Status.HeartbeatTime = &now
		if err := s.fleet.Client().Status().Patch(s.ctx, ns, client.MergeFrom(base)); err != nil {
			outcomes[i].refused = err
		} else {
			s.w.observeWrite(ns.DeepCopy())
		}
	}
	time.Sleep(grace + 5*time.Second)
	// The hostile agents are replaced by honest ones: they test the current attempt again.
	for i, h := range hs {
		if h.facts == nil && outcomes[i].refused == nil {
			s.fleet.Restart(victims[i])
		}
	}
	// One deadline for all of them: a loop wedged by one hostile status must not cost one wait each.
	converged := make([]time.Time, len(hs))
	s.waitFor("hostile nodes converged", recover, func() (bool, string) {
		st := s.w.snapshot()
		bad := map[string]string{}
		for _, nc := range st.notConverged {
			node, why, _ := strings.Cut(nc, ": ")
			bad[node] = why
		}
		var waiting []string
		for i := range hs {
			if outcomes[i].refused != nil || !converged[i].IsZero() {
				continue
			}
			if why, ok := bad[victims[i]]; ok {
				waiting = append(waiting, victims[i]+": "+why)
				continue
			}
			// Converged: since it last turned True (the wait starts after the hold), or now.
			converged[i] = time.Now()
			if t := s.w.lastSince(victims[i], outcomes[i].at, "True/Verified"); !t.IsZero() {
				converged[i] = t
			}
		}
		return len(waiting) == 0, short(waiting)
	})
	for i, h := range hs {
		phase := "hostile: " + h.name
		node := victims[i]
		if outcomes[i].refused != nil {
			s.record(phase, fmt.Sprintf("refused by the API server (%s): %s", node, firstLine(outcomes[i].refused)), "n/a")
			continue
		}
		took := fmt.Sprintf("NOT within %s", recover)
		if !converged[i].IsZero() {
			took = fmt.Sprintf("%.1fs", converged[i].Sub(outcomes[i].at).Seconds())
		}
		ns := s.w.sensor(node)
		end := ""
		if ns != nil {
			end = fmt.Sprintf("; ends with %s, attempt %d, %d failed attempt(s)", orNone(ns.Spec.Driver), ns.Spec.Attempt, len(ns.Spec.FailedAttempts))
		}
		s.record(phase, fmt.Sprintf("accepted by the API on %s; %s%s", node, s.w.story(node, outcomes[i].at), end), took)
	}
	// Everyone else went on.
	for _, node := range victims {
		s.w.setNodePhase(node, "")
	}
	s.w.setPhase("hostile: the other nodes")
	var others []string
	for _, n := range before.verifiedNodes {
		if !slices.Contains(victims, n) {
			others = append(others, n)
		}
	}
	// The rest of the rollout went on meanwhile: the others stay True and more nodes are verified.
	var broken []string
	ok := s.waitFor("hostile: the other nodes", recover, func() (bool, string) {
		st := s.w.snapshot()
		var lost []string
		for _, n := range others {
			if !s.w.isTrue(n) {
				lost = append(lost, n)
			}
		}
		more := 0
		for _, n := range st.verifiedNodes {
			if !slices.Contains(victims, n) && !slices.Contains(others, n) {
				more++
			}
		}
		rest := st.selected - len(victims) - len(others)
		return len(lost) == 0 && (more > 0 || rest == 0), fmt.Sprintf("not True again: %s; %d of %d other nodes verified since", short(lost), more, rest)
	})
	took := fmt.Sprintf("%.1fs after the injection", time.Since(injected).Seconds())
	if !ok {
		took, broken = fmt.Sprintf("NOT within %s", recover), []string{"the others did not go on"}
	}
	s.record("hostile: the other nodes", fmt.Sprintf("%d other verified nodes stayed True; the rollout went on with the nodes not yet verified", len(others)), took, broken...)
}

func firstLine(err error) string {
	msg := err.Error()
	if len(msg) > 240 {
		msg = msg[:240] + "..."
	}
	return strings.SplitN(msg, "\n", 2)[0]
}

// final waits for the whole rollout and checks that nothing was lost.
func (s *suite) final(profile *v1alpha1.SecurityProfile, t0 time.Time) {
	const name = "end of the run"
	s.w.setPhase(name)
	at := time.Now()
	ok := s.waitFor("every selected node Verified or with a recorded reason", recover, func() (bool, string) {
		st := s.w.snapshot()
		return len(st.notConverged) == 0 && st.selected == nodeCount, fmt.Sprintf("%d selected, not converged: %s", st.selected, short(st.notConverged))
	})
	st := s.w.snapshot()
	took := fmt.Sprintf("%.1fs", time.Since(at).Seconds())
	var broken []string
	if !ok {
		took = fmt.Sprintf("NOT within %s", recover)
		broken = append(broken, fmt.Sprintf("%d nodes neither Verified nor with a recorded reason", len(st.notConverged)))
	}
	// The profile counts every node.
	var counts v1alpha1.NodeCounts
	if !s.waitFor("profile status counts every node", 15*time.Second, func() (bool, string) {
		p := &v1alpha1.SecurityProfile{}
		if err := s.cl.client.Get(s.ctx, client.ObjectKeyFromObject(profile), p); err != nil {
			return false, err.Error()
		}
		counts = p.Status.Nodes
		return counts.Selected == nodeCount && counts.Verified == int32(st.verified) && counts.Pending == 0,
			fmt.Sprintf("profile counts %+v", counts)
	}) {
		broken = append(broken, "profile counts")
	}
	// Verified nodes carry no taint.
	var tainted []string
	nodes := &corev1.NodeList{}
	if err := s.cl.client.List(s.ctx, nodes, client.MatchingLabels{label: "true"}); err != nil {
		s.t.Errorf("list nodes for the taint check: %v", err)
		broken = append(broken, "taint check")
	} else {
		for _, n := range nodes.Items {
			for _, tn := range n.Spec.Taints {
				if tn.Key == v1alpha1.UnverifiedTaintKey && s.w.isTrue(n.Name) {
					tainted = append(tainted, n.Name)
				}
			}
		}
	}
	if len(tainted) > 0 {
		s.t.Errorf("verified nodes still tainted: %s", short(tainted))
		broken = append(broken, "verified nodes tainted")
	}
	lost := "nothing lost (every selected node has its NodeSensor, owned by the node as it is now)"
	if !ok {
		lost = "not converged: " + short(st.notConverged)
	}
	s.record(name, fmt.Sprintf(lost+"; %d/%d selected nodes verified; profile counts selected=%d verified=%d failed=%d pending=%d; at most %d verifying at once; whole run %.0fs after the profile",
		st.verified, st.selected, counts.Selected, counts.Verified, counts.Failed, counts.Pending, st.maxInFlight, time.Since(t0).Seconds()), took, broken...)
}

func (s *suite) printTable(total time.Duration) {
	time.Sleep(4 * time.Second) // the last starts are judged
	var b strings.Builder
	fmt.Fprintf(&b, "\nFault suite: %d simulated nodes, maxUnavailable %d, %.0fs in all\n\n", nodeCount, maxUnavailable, total.Seconds())
	fmt.Fprintf(&b, "| fault | what the loop did | invariants | time to reconverge |\n|---|---|---|---|\n")
	for _, r := range s.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.fault, strings.ReplaceAll(r.did, "|", "/"), s.invariants(r), r.reconverge)
	}
	s.t.Log(b.String())
}
