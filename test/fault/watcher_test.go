package fault

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/scheme"
)

// defaultChecks are the checks the API server defaults a profile's selfTest.checks to.
var defaultChecks = []v1alpha1.CheckName{v1alpha1.CheckExeUpperLayer, v1alpha1.CheckExeLowerLayer}

// nodeView is what the watcher knows of a Node.
type nodeView struct {
	uid      types.UID
	rv       uint64
	status   corev1.ConditionStatus // of RuntimeSecurityReady, "" without one
	reason   string
	tainted  bool
	selected bool
}

// nsVersion is one NodeSensor version the watcher saw, with its verdict on the proof.
type nsVersion struct {
	rv     uint64
	proof  error
	finish time.Time // the self-test's finishTime, as the agent wrote it
	driver v1alpha1.Driver
	// verifying: a driver assigned and no verdict for its attempt yet.
	verifying bool
}

type violation struct {
	phase, kind, msg string
	at               time.Duration
}

// transition is a change of a node's RuntimeSecurityReady condition or taint.
type transition struct {
	at   time.Time
	what string
	rv   uint64
}

// watcher follows Nodes and NodeSensors and checks the invariants on every event.
type watcher struct {
	t0             time.Time
	label          string
	maxUnavailable int
	grace          time.Duration

	mu           sync.Mutex
	phase        string
	nodePhase    map[string]string
	nodes        map[string]*nodeView
	leaving      map[string]bool
	sensors      map[string]*v1alpha1.NodeSensor
	history      map[string][]nsVersion
	proven       map[types.UID]map[int32]string // attempts proven (driver|boot) per NodeSensor
	reported     map[types.UID]int32            // highest attempt a verdict answered, per NodeSensor
	invalidSince map[string]time.Time
	flagged      map[string]bool
	pending      []pendingTrue
	starts       []pendingStart
	maxRV        uint64
	maxNodeRV    uint64
	maxSensorRV  uint64
	log          map[string][]transition
	inFlight     int
	verifying    []string
	maxInFlight  int
	brownout     map[string]bool // nodes untainted when the current brownout began
	violations   []violation
}

// pendingStart is a new attempt, judged against the other nodes as they were at its rv.
type pendingStart struct {
	node, phase string
	rv          uint64
	seen        time.Time
}

type pendingTrue struct {
	node string
	rv   uint64
	seen time.Time
	// since is the condition's lastTransitionTime, written by the manager.
	since time.Time
}

func startWatcher(ctx context.Context, t *testing.T, cfg *rest.Config, label string, maxUnavailable int, grace time.Duration) *watcher {
	t.Helper()
	w := &watcher{
		t0: time.Now(), label: label, maxUnavailable: maxUnavailable, grace: grace, phase: "rollout",
		nodePhase: map[string]string{}, nodes: map[string]*nodeView{}, leaving: map[string]bool{}, sensors: map[string]*v1alpha1.NodeSensor{},
		history: map[string][]nsVersion{}, proven: map[types.UID]map[int32]string{}, reported: map[types.UID]int32{},
		invalidSince: map[string]time.Time{}, flagged: map[string]bool{}, log: map[string][]transition{},
	}
	ca, err := cache.New(cfg, cache.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	add := func(obj client.Object, handler func(o any, deleted, tombstone bool)) {
		inf, err := ca.GetInformer(ctx, obj)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { handler(o, false, false) },
			UpdateFunc: func(_, o any) { handler(o, false, false) },
			DeleteFunc: func(o any) {
				d, tombstone := o.(toolscache.DeletedFinalStateUnknown)
				if tombstone {
					o = d.Obj
				}
				handler(o, true, tombstone)
			},
		}); err != nil {
			t.Fatal(err)
		}
	}
	add(&v1alpha1.NodeSensor{}, w.onSensor)
	add(&corev1.Node{}, w.onNode)
	go func() { _ = ca.Start(ctx) }()
	if !ca.WaitForCacheSync(ctx) {
		t.Fatal("watcher: cache did not sync")
	}
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				w.tick()
			}
		}
	}()
	return w
}

func finishOf(st *v1alpha1.SelfTestStatus) time.Time {
	if st.FinishTime == nil {
		return time.Time{}
	}
	return st.FinishTime.Time
}

// seen parses a resourceVersion and remembers the highest one seen.
func (w *watcher) seen(rv string) uint64 {
	v := rvOf(rv)
	if v > w.maxRV {
		w.maxRV = v
	}
	return v
}

func rvOf(s string) uint64 { v, _ := strconv.ParseUint(s, 10, 64); return v }

// proofError says why a NodeSensor does not prove its node under its current settings (nil: it does).
func (w *watcher) proofError(ns *v1alpha1.NodeSensor) error {
	if ns == nil {
		return fmt.Errorf("no NodeSensor")
	}
	st, spec := ns.Status.SelfTest, ns.Spec
	switch {
	case spec.Driver == "":
		return fmt.Errorf("no driver assigned")
	case st == nil:
		return fmt.Errorf("no self-test")
	case st.Result != v1alpha1.SelfTestPassed:
		return fmt.Errorf("self-test %s", st.Result)
	case ns.Status.Probe == nil:
		return fmt.Errorf("no probe")
	case st.BootID == "":
		return fmt.Errorf("self-test has an empty boot ID")
	case st.BootID != ns.Status.Probe.Kernel.BootID.Value:
		return fmt.Errorf("self-test ran in boot %q, the node runs boot %q", st.BootID, ns.Status.Probe.Kernel.BootID.Value)
	case st.Driver != spec.Driver:
		return fmt.Errorf("self-test ran driver %s, the spec says %s", st.Driver, spec.Driver)
	case st.Attempt != spec.Attempt:
		// Re-verification keeps the proof of the attempt before, once seen as a proof.
		reverifying := st.Attempt == spec.Attempt-1 && w.proven[ns.UID][st.Attempt] == string(st.Driver)+"|"+st.BootID
		if !reverifying {
			return fmt.Errorf("self-test answers attempt %d, the spec is at attempt %d", st.Attempt, spec.Attempt)
		}
	}
	required := spec.SelfTest.Checks
	if len(required) == 0 {
		required = defaultChecks
	}
	results := map[v1alpha1.CheckName]v1alpha1.SelfTestResult{}
	for _, c := range st.Checks {
		results[c.Name] = c.Result
		if c.Result != v1alpha1.SelfTestPassed {
			return fmt.Errorf("check %s is %s in a Passed self-test", c.Name, c.Result)
		}
	}
	for _, c := range required {
		if results[c] != v1alpha1.SelfTestPassed {
			return fmt.Errorf("required check %s not reported (checks: %d)", c, len(st.Checks))
		}
	}
	return nil
}

// violate records a broken invariant, tagged with the node's own phase if it has one.
func (w *watcher) violate(node, kind, msg string) { w.violateIn(w.phaseOf(node), kind, msg) }

func (w *watcher) violateIn(phase, kind, msg string) {
	w.violations = append(w.violations, violation{phase: phase, kind: kind, msg: msg, at: time.Since(w.t0)})
}

func (w *watcher) phaseOf(node string) string {
	if p := w.nodePhase[node]; p != "" {
		return p
	}
	return w.phase
}

// setNodePhase tags the violations of one node with a fault of its own ("" ends it).
func (w *watcher) setNodePhase(node, p string) { w.mu.Lock(); w.nodePhase[node] = p; w.mu.Unlock() }

func (w *watcher) onSensor(o any, deleted, tombstone bool) {
	ns, ok := o.(*v1alpha1.NodeSensor)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	name, rv := ns.Name, w.seen(ns.ResourceVersion)
	w.maxSensorRV = max(w.maxSensorRV, rv)
	if tombstone {
		// Deleted while the watch was down: the re-list says only that it is gone by now.
		rv = w.maxRV
	}
	old := w.sensors[name]
	if deleted {
		delete(w.sensors, name)
		w.history[name] = append(w.history[name], nsVersion{rv: rv, proof: fmt.Errorf("NodeSensor deleted")})
		w.note(name, rv, "NodeSensor deleted")
		w.countInFlight()
		w.checkTrue(name)
		return
	}
	if old != nil && old.UID != ns.UID {
		old = nil
	}
	if old == nil {
		w.note(name, rv, "NodeSensor created")
	}
	started := ns.Spec.Driver != "" && (old == nil || ns.Spec.Attempt > old.Spec.Attempt)
	if old != nil && ns.Spec.Attempt != old.Spec.Attempt {
		w.note(name, rv, fmt.Sprintf("attempt %d: %s", ns.Spec.Attempt, orNone(ns.Spec.Driver)))
	}
	if st := ns.Status.SelfTest; st != nil && (old == nil || old.Status.SelfTest == nil || !finishOf(old.Status.SelfTest).Equal(finishOf(st)) || old.Status.SelfTest.Attempt != st.Attempt) {
		w.debug(name, rv, fmt.Sprintf("verdict %s for attempt %d (%s)", st.Result, st.Attempt, st.Driver))
	}
	w.sensors[name] = ns
	w.record(name, ns)
	w.countInFlight()
	if started {
		w.starts = append(w.starts, pendingStart{node: name, phase: w.phaseOf(name), rv: rv, seen: time.Now()})
	}
	w.checkTrue(name)
}

// record adds a NodeSensor version to the node's history (once per resourceVersion) and notes
// the attempts it proves.
func (w *watcher) record(name string, ns *v1alpha1.NodeSensor) {
	rv := rvOf(ns.ResourceVersion)
	for _, h := range w.history[name] {
		if h.rv == rv {
			return
		}
	}
	st := ns.Status.SelfTest
	if st != nil && st.Attempt > w.reported[ns.UID] {
		w.reported[ns.UID] = st.Attempt
	}
	err := w.proofError(ns)
	var finish time.Time
	if st != nil {
		if err == nil && st.Attempt == ns.Spec.Attempt {
			if w.proven[ns.UID] == nil {
				w.proven[ns.UID] = map[int32]string{}
			}
			w.proven[ns.UID][st.Attempt] = string(st.Driver) + "|" + st.BootID
		}
		finish = finishOf(st)
	}
	verifying := ns.Spec.Driver != "" && (st == nil || st.Attempt < ns.Spec.Attempt)
	h := append(w.history[name], nsVersion{rv: rv, proof: err, finish: finish, driver: ns.Spec.Driver, verifying: verifying})
	if len(h) > 96 {
		h = h[len(h)-96:]
	}
	w.history[name] = h
}

// observeWrite records a NodeSensor as an agent's (or the suite's) write left it: into the
// history only, which judges by resourceVersion; what the node looks like now stays the watch's.
func (w *watcher) observeWrite(ns *v1alpha1.NodeSensor) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.record(ns.Name, ns)
}

// countInFlight counts the selected nodes verifying: a driver assigned, no verdict for that
// attempt yet. More than maxUnavailable is not by itself a broken invariant (verified nodes can
// fail on their own); the manager starting a node while maxUnavailable are verifying is.
func (w *watcher) countInFlight() {
	w.verifying = w.verifying[:0]
	for name, nv := range w.nodes {
		ns := w.sensors[name]
		if !nv.selected || ns == nil || ns.Spec.Driver == "" {
			continue
		}
		if w.reported[ns.UID] < ns.Spec.Attempt {
			w.verifying = append(w.verifying, name)
		}
	}
	sort.Strings(w.verifying)
	w.inFlight = len(w.verifying)
	if w.inFlight > w.maxInFlight {
		w.maxInFlight = w.inFlight
	}
}

func (w *watcher) onNode(o any, deleted, _ bool) {
	node, ok := o.(*corev1.Node)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.maxNodeRV = max(w.maxNodeRV, w.seen(node.ResourceVersion))
	name := node.Name
	old := w.nodes[name]
	if deleted {
		delete(w.nodes, name)
		w.note(name, rvOf(node.ResourceVersion), "Node deleted")
		w.countInFlight()
		return
	}
	nv := &nodeView{uid: node.UID, rv: rvOf(node.ResourceVersion), selected: node.Labels[w.label] == "true" && !w.leaving[name]}
	var since time.Time
	for _, c := range node.Status.Conditions {
		if c.Type == v1alpha1.NodeConditionRuntimeSecurityReady {
			nv.status, nv.reason, since = c.Status, c.Reason, c.LastTransitionTime.Time
		}
	}
	for _, t := range node.Spec.Taints {
		if t.Key == v1alpha1.UnverifiedTaintKey {
			nv.tainted = true
		}
	}
	w.nodes[name] = nv
	if old == nil || old.uid != nv.uid {
		w.note(name, nv.rv, "Node created")
		old = &nodeView{}
	}
	if old.status != nv.status || old.reason != nv.reason {
		w.note(name, nv.rv, fmt.Sprintf("%s/%s", orDash(string(nv.status)), orDash(nv.reason)))
		if nv.status == corev1.ConditionTrue && old.status != corev1.ConditionTrue {
			w.pending = append(w.pending, pendingTrue{node: name, rv: nv.rv, seen: time.Now(), since: since})
		}
	}
	if nv.tainted != old.tainted {
		w.note(name, nv.rv, map[bool]string{true: "tainted", false: "untainted"}[nv.tainted])
		if nv.tainted && w.brownout[name] {
			w.violate(name, "brownout taint", fmt.Sprintf("node %s tainted during the brownout (condition %s/%s)", name, nv.status, nv.reason))
		}
	}
	w.countInFlight()
	w.checkTrue(name)
}

// at returns the version of a node's NodeSensor in effect just before rv, or nil.
func (w *watcher) at(node string, rv uint64) *nsVersion {
	var v *nsVersion
	for i := range w.history[node] {
		// On a tie the later entry wins: a deletion recorded with the last known version.
		if h := &w.history[node][i]; h.rv < rv && (v == nil || h.rv >= v.rv) {
			v = h
		}
	}
	return v
}

// judgeStarts checks each attempt the manager started a few seconds ago against the nodes
// verifying at that resourceVersion. A start is voluntary when the node was waiting (no driver)
// or proven (a re-verification); a fallback after a failed or disproven verdict is not, the node
// being unavailable already. It judges by resourceVersion, not by arrival: a watch that re-lists
// after an API outage delivers objects in name order and skips versions. The history also holds
// every version an agent wrote (observeWrite), so no verdict is missed; a skipped manager write
// can only hide an overlap, not invent one.
func (w *watcher) judgeStarts() {
	keep := w.starts[:0]
	for _, p := range w.starts {
		if time.Since(p.seen) < 3*time.Second {
			keep = append(keep, p)
			continue
		}
		if prev := w.at(p.node, p.rv); prev != nil && prev.driver != "" && prev.proof != nil {
			continue
		}
		var others []string
		for name, nv := range w.nodes {
			if name == p.node || !nv.selected {
				continue
			}
			if v := w.at(name, p.rv); v != nil && v.verifying {
				others = append(others, name)
			}
		}
		if len(others) >= w.maxUnavailable {
			sort.Strings(others)
			w.violateIn(p.phase, "maxUnavailable", fmt.Sprintf("the manager started %s (rv %d) while %d nodes were verifying (maxUnavailable %d): %s",
				p.node, p.rv, len(others), w.maxUnavailable, strings.Join(others, ", ")))
		}
	}
	w.starts = keep
}

// checkTrue starts or ends the grace period of a True node whose NodeSensor does not prove it.
func (w *watcher) checkTrue(name string) {
	nv := w.nodes[name]
	if nv == nil || nv.status != corev1.ConditionTrue || w.proofError(w.sensors[name]) == nil {
		delete(w.invalidSince, name)
		delete(w.flagged, name)
		return
	}
	if _, ok := w.invalidSince[name]; !ok {
		w.invalidSince[name] = time.Now()
	}
}

// tick judges the nodes that turned True a moment ago, against their NodeSensor as it was just
// before the node's write, and the nodes True without proof for longer than the grace.
func (w *watcher) tick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	keep := w.pending[:0]
	for _, p := range w.pending {
		var before, after *nsVersion
		for i := range w.history[p.node] {
			v := &w.history[p.node][i]
			if v.rv < p.rv && (before == nil || v.rv > before.rv) {
				before = v
			}
			if v.rv > p.rv && (after == nil || v.rv < after.rv) {
				after = v
			}
		}
		// Wait for the NodeSensor's next version (a heartbeat), so a watch that lags or re-lists
		// after an API outage is judged on what it delivers.
		if after == nil && time.Since(p.seen) < 30*time.Second {
			keep = append(keep, p)
			continue
		}
		switch {
		case before != nil && before.proof == nil:
		case after != nil && after.proof == nil && !after.finish.IsZero() && !after.finish.Truncate(time.Second).After(p.since):
			// A proof finished before the node turned True, which the watch did not deliver
			// (it re-listed after an API outage).
		case before == nil:
			w.violate(p.node, "True without proof", fmt.Sprintf("node %s turned True (rv %d) before any NodeSensor was seen", p.node, p.rv))
		default:
			w.violate(p.node, "True without proof", fmt.Sprintf("node %s turned True (rv %d) while its NodeSensor (rv %d) said: %v", p.node, p.rv, before.rv, before.proof))
		}
	}
	w.pending = keep
	w.judgeStarts()
	for name, since := range w.invalidSince {
		if !w.flagged[name] && time.Since(since) > w.grace {
			w.flagged[name] = true
			w.violate(name, "True without proof", fmt.Sprintf("node %s stayed True for more than %s while its NodeSensor said: %v", name, w.grace, w.proofError(w.sensors[name])))
		}
	}
}

func (w *watcher) note(name string, rv uint64, what string) {
	w.log[name] = append(w.log[name], transition{at: time.Now(), what: what, rv: rv})
}

// debug notes what only the full story (logStories) shows.
func (w *watcher) debug(name string, rv uint64, what string) { w.note(name, rv, "·"+what) }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func orNone(d v1alpha1.Driver) string {
	if d == "" {
		return "none"
	}
	return string(d)
}

// caughtUp reports whether both watches delivered at least these resourceVersions.
func (w *watcher) caughtUp(nodeRV, sensorRV uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.maxNodeRV >= nodeRV && w.maxSensorRV >= sensorRV
}

// setPhase tags the violations found from now on with a fault's name.
func (w *watcher) setPhase(p string) { w.mu.Lock(); w.phase = p; w.mu.Unlock() }

// violationsIn returns the violations tagged with a phase.
func (w *watcher) violationsIn(phase string) []violation {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []violation
	for _, v := range w.violations {
		if v.phase == phase {
			out = append(out, v)
		}
	}
	return out
}

func (w *watcher) allViolations() []violation {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]violation(nil), w.violations...)
}

// beginBrownout remembers the untainted nodes: none of them may be tainted until endBrownout.
func (w *watcher) beginBrownout() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.brownout = map[string]bool{}
	for name, nv := range w.nodes {
		if nv.selected && !nv.tainted {
			w.brownout[name] = true
		}
	}
}

func (w *watcher) endBrownout() { w.mu.Lock(); w.brownout = nil; w.mu.Unlock() }

// leave takes a node out of the selection before the test deletes it.
func (w *watcher) leave(name string, leaving bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.leaving[name] = leaving
	if nv := w.nodes[name]; nv != nil && leaving {
		nv.selected = false
	}
	w.countInFlight()
}

// state is a consistent summary of the watched world.
type state struct {
	selected, verified, inFlight, maxInFlight int
	verifiedNodes, verifyingNodes             []string
	notConverged                              []string
}

// snapshot summarizes the world; a selected node has converged when its NodeSensor exists and
// is owned by the node as it is now, and the node is True with a proof, or False, or Unknown with
// a reason other than Pending and HeartbeatExpired (a recorded per-node failure).
func (w *watcher) snapshot() state {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := state{inFlight: w.inFlight, maxInFlight: w.maxInFlight, verifyingNodes: append([]string(nil), w.verifying...)}
	names := make([]string, 0, len(w.nodes))
	for name := range w.nodes {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		nv := w.nodes[name]
		if !nv.selected {
			continue
		}
		s.selected++
		ns := w.sensors[name]
		proof := w.proofError(ns)
		if nv.status == corev1.ConditionTrue && proof == nil {
			s.verified++
			s.verifiedNodes = append(s.verifiedNodes, name)
		}
		var why string
		switch {
		case ns == nil:
			why = "no NodeSensor"
		case len(ns.OwnerReferences) == 0 || ns.OwnerReferences[0].UID != nv.uid:
			why = "NodeSensor not owned by the node as it is now"
		case nv.status == corev1.ConditionTrue && proof != nil:
			why = "True without proof: " + proof.Error()
		case nv.status == corev1.ConditionTrue, nv.status == corev1.ConditionFalse:
		case nv.status == corev1.ConditionUnknown && nv.reason != "Pending" && nv.reason != "HeartbeatExpired" && nv.reason != "":
		default:
			why = fmt.Sprintf("%s/%s", orDash(string(nv.status)), orDash(nv.reason))
		}
		if why != "" {
			s.notConverged = append(s.notConverged, name+": "+why)
		}
	}
	return s
}

// isTrue reports whether a node is True with a proof.
func (w *watcher) isTrue(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	nv := w.nodes[name]
	return nv != nil && nv.status == corev1.ConditionTrue && w.proofError(w.sensors[name]) == nil
}

// sensor returns a copy of the latest NodeSensor of a node, or nil.
func (w *watcher) sensor(name string) *v1alpha1.NodeSensor {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ns := w.sensors[name]; ns != nil {
		return ns.DeepCopy()
	}
	return nil
}

// story tells what happened to a node since a moment: its condition, taint and decisions.
func (w *watcher) story(name string, since time.Time) string { return w.tell(name, since, false) }

// fullStory adds the verdicts and the resourceVersion of every step.
func (w *watcher) fullStory(name string) string { return w.tell(name, w.t0, true) }

func (w *watcher) tell(name string, since time.Time, full bool) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var parts []string
	for _, tr := range w.log[name] {
		if tr.at.Before(since) || (!full && strings.HasPrefix(tr.what, "·")) {
			continue
		}
		if full {
			parts = append(parts, fmt.Sprintf("%s (+%.1fs rv %d)", strings.TrimPrefix(tr.what, "·"), tr.at.Sub(since).Seconds(), tr.rv))
		} else {
			parts = append(parts, fmt.Sprintf("%s (+%.1fs)", tr.what, tr.at.Sub(since).Seconds()))
		}
	}
	if len(parts) == 0 {
		return "no change"
	}
	if len(parts) > 12 && !full {
		parts = append(parts[:11], fmt.Sprintf("... %d more, last %s", len(parts)-11, parts[len(parts)-1]))
	}
	return strings.Join(parts, " → ")
}

// lastSince returns when a node's log last said what since a moment (zero: never).
func (w *watcher) lastSince(name string, since time.Time, what string) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	var at time.Time
	for _, tr := range w.log[name] {
		if tr.what == what && !tr.at.Before(since) {
			at = tr.at
		}
	}
	return at
}

// taintedSince counts the nodes tainted since a moment.
func (w *watcher) taintedSince(since time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, log := range w.log {
		for _, tr := range log {
			if tr.what == "tainted" && !tr.at.Before(since) {
				n++
				break
			}
		}
	}
	return n
}

// countSince counts the nodes whose log has an entry since a moment that starts with prefix.
func (w *watcher) countSince(since time.Time, prefix string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, log := range w.log {
		for _, tr := range log {
			if strings.HasPrefix(tr.what, prefix) && !tr.at.Before(since) {
				n++
				break
			}
		}
	}
	return n
}
