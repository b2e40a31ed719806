package controllers

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/nodestate"
	"github.com/driverpilot/driverpilot/internal/rollout"
	"github.com/driverpilot/driverpilot/internal/selection"
)

// progress is what one pass over a profile's nodes found and did.
type progress struct {
	phases map[string]nodestate.Phase
	nodes  []nodestate.Node
	plan   rollout.Plan
	// canaries are the canary nodes this pass used, recorded in the profile status.
	canaries []string
	// upToDate counts verified nodes proven under the profile's current spec.
	upToDate int
	// expired counts nodes whose heartbeat expired; brownout says they expired together.
	expired  int
	brownout bool
	// errs are per-node failures of this pass, recorded on their node.
	errs map[string]error
	// pods say where no agent pod runs its sensor now (podtruth.go).
	pods podTruth
	// fleet is what the profile's node groups learned (fleet.go).
	fleet *fleetView
	// create are the governed nodes without a NodeSensor that get one, without a driver, at the
	// end of the pass (createNodeSensors); deferred counts those that wait for a like node.
	create   []string
	deferred int
}

// advance moves each node on: a failed attempt falls back to the next driver, verified nodes
// whose proof no longer answers the profile re-verify, and queued nodes get their driver as the
// rollout allows. A failure on one node is recorded on that node and the others move on; the
// joined error is returned after the pass.
func (r *SecurityProfileReconciler) advance(ctx context.Context, profile *v1alpha1.SecurityProfile, governed map[string]*corev1.Node, sensors map[string]*v1alpha1.NodeSensor, missing []string, pending map[string]bool, now time.Time) (progress, error) {
	names := make([]string, 0, len(sensors))
	for name := range sensors {
		names = append(names, name)
	}
	sort.Strings(names)

	for _, name := range names {
		if r.expect.stale(sensors[name]) {
			return progress{}, errStaleCache
		}
	}
	p := progress{phases: map[string]nodestate.Phase{}, errs: map[string]error{}, fleet: r.learnFleet(ctx, profile, sensors, now)}
	var errs []error
	fail := func(ns *v1alpha1.NodeSensor, err error) {
		errs = append(errs, err)
		r.nodeFailed(&p, profile, ns, err)
	}
	// decide runs the selection engine for a node; a failure is recorded on the node.
	decide := func(ns *v1alpha1.NodeSensor) (selection.Decision, bool) {
		d, err := r.decide(profile, ns, ns.Spec.FailedAttempts, p.fleet)
		if err != nil {
			fail(ns, err)
			return d, false
		}
		return d, true
	}
	pods, err := r.readAgentPods(ctx, profile, sensors)
	if err != nil {
		// Without the pods, no pod is replaced this pass; the nodes move on otherwise.
		errs = append(errs, err)
	}
	p.pods = pods.truth
	decisions := map[string]selection.Decision{}
	reprove := map[string]string{}
	// current are the verified nodes proven under the current spec and agent on their own
	// choice (predictions' samples); mispredicted those whose predicted driver their facts refused.
	current, mispredicted := map[string]bool{}, map[string]bool{}
	for _, name := range names {
		ns := sensors[name]
		phase := nodestate.Classify(ns, now, r.HeartbeatTimeout)
		switch {
		case r.predictedUnanswered(ns, now):
			if err := r.withdrawPrediction(ctx, profile, ns); err != nil {
				fail(ns, err)
			}
			phase = nodestate.Classify(ns, now, r.HeartbeatTimeout)
		case unconfirmedPrediction(ns, governed[name]):
			// The facts are in: the prediction stands only if they choose the same driver. If
			// not, the node's own decision goes out at once, in the slot the prediction held, and
			// a verdict on the prediction counts neither as proof nor as a failure.
			d, ok := decide(ns)
			if !ok || d.Driver == ns.Spec.Driver {
				break
			}
			mispredicted[name] = true
			r.eventf(ns, profile, corev1.EventTypeNormal, "Reverify", "Verify", "Node %s re-verifies: its driver %s was predicted from node %s, but its own facts choose %s",
				name, ns.Spec.Driver, ns.Spec.PredictedFrom, orNone(d.Driver))
			if err := r.assign(ctx, profile, ns, d, ns.Spec.FailedAttempts, false); err != nil {
				fail(ns, err)
			}
			phase = nodestate.Classify(ns, now, r.HeartbeatTimeout)
		}
		switch phase {
		case nodestate.AttemptFailed:
			// Fallback does not wait for a slot: the node is already verifying.
			if err := r.fallback(ctx, profile, ns, now, p.fleet); err != nil {
				fail(ns, err)
				break
			}
			phase = nodestate.Classify(ns, now, r.HeartbeatTimeout)
		case nodestate.SensorUnavailable:
			// The agent's pod runs another sensor than the spec names. When the profile changed
			// the sensor, the node takes the new settings at once (it lost its sensor already);
			// otherwise its agent tests again once its pod is replaced. No failed attempt either way.
			d, ok := decide(ns)
			if !ok {
				break
			}
			if ns.Spec.Sensor != profile.Spec.Sensor {
				if err := r.assign(ctx, profile, ns, d, ns.Spec.FailedAttempts, false); err != nil {
					fail(ns, err)
					break
				}
				phase = nodestate.Classify(ns, now, r.HeartbeatTimeout)
			}
		case nodestate.Verified:
			switch {
			case nodestate.NeedsReverify(ns, r.AgentVersion):
				d, ok := decide(ns)
				if !ok {
					break
				}
				decisions[name], reprove[name] = d, "proven by agent "+ns.Status.SelfTest.AgentVersion
				phase = nodestate.Reverify
			case nodestate.ProvedByOlderAgent(ns, r.AgentVersion):
				// A canary proven by the old agent does not open the upgrade to the others.
				phase = nodestate.Outdated
				if pods.state[name] != nodestate.AgentCurrent {
					// The rollout replaces the old agent's pod; its new attempt follows.
					d, ok := decide(ns)
					if !ok {
						break
					}
					decisions[name], reprove[name] = d, "proven by agent "+ns.Status.SelfTest.AgentVersion+" in a pod of an older template"
				}
			default:
				d, ok := decide(ns)
				if !ok {
					break
				}
				if why := nodestate.Reprove(ns.Spec, profile.Spec.Sensor, profile.Spec.SelfTest.Checks, d.Candidates); why != "" {
					// The proof answers an older spec: it stands until the rollout re-verifies.
					decisions[name], reprove[name] = d, why
					phase = nodestate.Reverify
					break
				}
				if pods.state[name] != nodestate.AgentCurrent {
					// Proven by a pod of an older template: once the rollout replaced it, the
					// node re-verifies under the new one.
					decisions[name], reprove[name] = d, "its agent pod was replaced with the current pod template"
					break
				}
				p.upToDate++
				current[name] = d.Driver == ns.Spec.Driver
				if err := r.refreshSettings(ctx, profile, ns); err != nil {
					fail(ns, err)
				}
			}
		case nodestate.Queued, nodestate.NoSupportedDriver:
			d, ok := decide(ns)
			if !ok {
				break
			}
			decisions[name] = d
			switch {
			case d.Driver == "" && phase == nodestate.Queued:
				// Nothing to verify: answer at once, without taking a rollout slot.
				if err := r.assign(ctx, profile, ns, d, ns.Spec.FailedAttempts, false); err != nil {
					delete(decisions, name)
					fail(ns, err)
					break
				}
				phase = nodestate.NoSupportedDriver
			case d.Driver != "" && phase == nodestate.NoSupportedDriver:
				// The profile now allows a driver that was not allowed before: queue again.
				phase = nodestate.Queued
			}
		}
		p.phases[name] = phase
	}

	nodes := make([]nodestate.Node, 0, len(names))
	for _, name := range names {
		ns := sensors[name]
		stalled := p.phases[name] == nodestate.HeartbeatExpired && nodestate.StalledWhileVerifying(ns, now)
		silent := p.phases[name] == nodestate.HeartbeatExpired ||
			(p.phases[name] == nodestate.AwaitingProbe && now.Sub(ns.CreationTimestamp.Time) > r.HeartbeatTimeout)
		nodes = append(nodes, nodestate.Node{Name: name, Phase: p.phases[name], Driver: ns.Spec.Driver, Stalled: stalled, Silent: silent, Agent: pods.state[name]})
	}
	// Of the governed nodes, not of those with a NodeSensor yet: a fleet's NodeSensors are
	// created over several passes.
	maxUnavailable, err := rollout.ResolveMaxUnavailable(profile.Spec.Rollout.MaxUnavailable, len(governed))
	if err != nil {
		return progress{}, err
	}
	p.canaries = chooseCanaries(profile, governed)
	isCanary := make(map[string]bool, len(p.canaries))
	for _, n := range p.canaries {
		isCanary[n] = true
	}
	released := r.released(nodes, sensors, now)
	// The nodes without a NodeSensor are nodes of the rollout too: queued with a predicted
	// driver, or waiting for one to be created (now, or once a like node settled).
	predicted := r.predict(profile, governed, sensors, missing, pending, &p, decisions, current, mispredicted, released, isCanary, now)
	for _, name := range missing {
		phase, driver := nodestate.AwaitingProbe, v1alpha1.Driver("")
		if s, ok := predicted.Predicted[name]; ok {
			phase, driver = nodestate.Queued, s.Driver
		}
		p.phases[name] = phase
		nodes = append(nodes, nodestate.Node{Name: name, Phase: phase, Driver: driver, Uncreated: true})
	}
	for name, assigned := range pending {
		// Created by an earlier pass, not in the cache yet: one created with a driver holds its
		// rollout slot (the pass goes on without waiting for the cache to show it).
		phase := nodestate.AwaitingProbe
		if assigned {
			phase = nodestate.Verifying
		}
		p.phases[name] = phase
		nodes = append(nodes, nodestate.Node{Name: name, Phase: phase, Uncreated: true})
	}
	p.create, p.deferred = predicted.Create, len(predicted.Deferred)
	p.plan = rollout.Decide(rollout.Input{
		Nodes:           nodes,
		Canaries:        isCanary,
		MaxUnavailable:  maxUnavailable,
		PauseOnFailures: int(profile.Spec.Rollout.PauseOnFailures),
		Groups:          p.fleet.gates(nodes, decisions, released),
	})
	if p.plan.Blocked == "" && p.deferred > 0 {
		p.plan.Blocked = fmt.Sprintf("%d nodes wait for the first node like them (kernel, OS image, architecture, cloud) to settle", p.deferred)
	}
	var startErrs, created sync.Map
	// Outdated agent pods go first: a node whose pod is replaced and also starts gets its new
	// attempt from the new pod.
	errs = append(errs, forEach(ctx, p.plan.Replace, func(name string) error {
		if !pods.ok {
			return nil // the DaemonSet is not at the current template yet: next pass
		}
		err := r.replaceAgentPod(ctx, profile, sensors[name], pods.outdated[name], p.phases[name])
		if err != nil {
			startErrs.Store(name, err)
		}
		return err
	}))
	errs = append(errs, forEach(ctx, p.plan.Start, func(name string) error {
		ns := sensors[name]
		if ns == nil {
			ns, err := r.createPredicted(ctx, profile, governed[name], predicted.Predicted[name], sensors)
			if err != nil {
				startErrs.Store(name, err)
				return err
			}
			if ns != nil {
				created.Store(name, ns)
			}
			return nil
		}
		if _, ok := decisions[name]; !ok {
			return nil // its decision failed above, and was recorded there
		}
		if why := reprove[name]; why != "" {
			r.eventf(ns, profile, corev1.EventTypeNormal, "Reverify", "Verify", "Node %s re-verifies: %s", name, why)
		}
		_, reverify := reprove[name] // a proven node: its proof stands while the new attempt runs
		err := r.assign(ctx, profile, ns, decisions[name], ns.Spec.FailedAttempts, reverify)
		if err != nil {
			startErrs.Store(name, err)
		}
		return err
	}))
	startErrs.Range(func(k, v any) bool {
		var regarding client.Object = governed[k.(string)]
		if ns := sensors[k.(string)]; ns != nil {
			regarding = ns
		}
		r.nodeFailed(&p, profile, regarding, v.(error))
		return true
	})
	created.Range(func(k, v any) bool {
		sensors[k.(string)] = v.(*v1alpha1.NodeSensor)
		return true
	})
	for _, name := range p.plan.Start {
		if _, failed := startErrs.Load(name); !failed && sensors[name] != nil {
			p.phases[name] = nodestate.Classify(sensors[name], now, r.HeartbeatTimeout)
		}
	}
	for i := range nodes {
		nodes[i].Phase = p.phases[nodes[i].Name]
		if ns := sensors[nodes[i].Name]; ns != nil {
			nodes[i].Driver, nodes[i].Uncreated = ns.Spec.Driver, false
		}
	}
	p.nodes = nodes
	p.expired, p.brownout = nodestate.Brownout(nodes)
	p.fleet = r.learnFleet(ctx, profile, sensors, now) // the matrix as this pass left it
	observeNodes(profile.Name, nodes)
	return p, errors.Join(errs...)
}

// nodeFailed records a per-node failure on its node: an event now, the condition reason
// DecisionFailed when the node is not proven. A conflict is no failure: the pass is retried.
func (r *SecurityProfileReconciler) nodeFailed(p *progress, profile *v1alpha1.SecurityProfile, regarding client.Object, err error) {
	if apierrors.IsConflict(err) {
		return
	}
	p.errs[regarding.GetName()] = err
	r.nodeEvent(profile, regarding, err)
}

// nodeEvent records a per-node failure as an event about the node's object (its NodeSensor, or
// the Node when it has none); conflicts are retried, not reported.
func (r *SecurityProfileReconciler) nodeEvent(profile *v1alpha1.SecurityProfile, regarding client.Object, err error) {
	if apierrors.IsConflict(err) {
		return
	}
	r.eventf(regarding, profile, corev1.EventTypeWarning, ReasonDecisionFailed, "Decide", "Node %s: %v", regarding.GetName(), err)
}

// refreshSettings copies settings that change nothing a node must prove (the self-test's timeout
// and interval) into a verified node's spec, without a new attempt.
func (r *SecurityProfileReconciler) refreshSettings(ctx context.Context, profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor) error {
	want := ns.Spec.DeepCopy()
	copySettings(profile, want)
	if equality.Semantic.DeepEqual(want.SelfTest, ns.Spec.SelfTest) {
		return nil
	}
	ownCopy(ns)
	base := ns.DeepCopy()
	ns.Spec.SelfTest = want.SelfTest
	if err := r.Patch(ctx, ns, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("copy self-test settings to %s: %w", ns.Name, err)
	}
	return nil
}

func (r *SecurityProfileReconciler) decide(profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor, failed []v1alpha1.FailedAttempt, fleet *fleetView) (selection.Decision, error) {
	d, err := selection.Decide(selection.Input{
		Facts:          *ns.Status.Probe,
		Policy:         profile.Spec.Drivers,
		Sensor:         profile.Spec.Sensor,
		KnownIssues:    r.KnownIssues,
		FailedAttempts: onKernel(failed, ns.Status.Probe.Kernel.Release.Value),
	})
	return fleet.apply(d, ns.Name), err
}

// onKernel keeps the failed attempts recorded on this kernel: a driver that failed on another
// kernel deserves a new self-test on this one.
func onKernel(failed []v1alpha1.FailedAttempt, release string) []v1alpha1.FailedAttempt {
	var out []v1alpha1.FailedAttempt
	for _, f := range failed {
		if f.KernelRelease == "" || f.KernelRelease == release {
			out = append(out, f)
		}
	}
	return out
}

// assign writes a decision as the node's next attempt (an empty driver means NoSupportedDriver).
// failed replaces the recorded failed attempts. proven says the manager sees the current attempt
// proven: a new attempt with the same driver then records it as provenAttempt, and the node
// stays verified on it until the new verdict is in.
func (r *SecurityProfileReconciler) assign(ctx context.Context, profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor, d selection.Decision, failed []v1alpha1.FailedAttempt, proven bool) error {
	ownCopy(ns)
	base := ns.DeepCopy()
	ns.Spec.ProvenAttempt, ns.Spec.PredictedFrom = 0, ""
	if proven && d.Driver == ns.Spec.Driver {
		ns.Spec.ProvenAttempt = ns.Spec.Attempt
	}
	ns.Spec.FailedAttempts = failed
	ns.Spec.Attempt++
	ns.Spec.Driver = d.Driver
	ns.Spec.Candidates = d.Candidates
	ns.Spec.Reasons = boundedReasons(d.Reasons)
	copySettings(profile, &ns.Spec)
	if err := r.Patch(ctx, ns, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("assign driver to %s: %w", ns.Name, err)
	}
	r.expect.set(ns)
	if d.Driver == "" {
		r.eventf(profile, nil, corev1.EventTypeWarning, "NoSupportedDriver", "SelectDriver",
			"Node %s: no supported driver: %s", ns.Name, reasonsText(d.Reasons))
		recordFailure(profile.Name, "", "NoSupportedDriver")
	} else {
		r.batchedEvent(ctx, profile, "DriverSelected", "SelectDriver", fmt.Sprintf("driver %s selected; candidates %v", d.Driver, d.Candidates), ns.Name)
	}
	log.FromContext(ctx).V(1).Info("Driver assigned", "node", ns.Name, "driver", d.Driver, "attempt", ns.Spec.Attempt)
	return nil
}

// fallback records the failed attempt and assigns the next eligible driver, if any.
func (r *SecurityProfileReconciler) fallback(ctx context.Context, profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor, now time.Time, fleet *fleetView) error {
	t := ns.Status.SelfTest
	reason := t.Reason
	if t.Message != "" {
		reason += ": " + t.Message
	}
	if t.Result == v1alpha1.SelfTestPassed {
		// Classify calls a pass without every required check a failure: say which one.
		reason = fmt.Sprintf("IncompleteSelfTest: reported Passed without check %s passing", nodestate.MissingCheck(t, ns.Spec.SelfTest.Checks))
	}
	// Never copy a value into a field with a smaller bound: the API would refuse the decision.
	reason = v1alpha1.Truncate(reason, 1024)
	failed := append(append([]v1alpha1.FailedAttempt(nil), ns.Spec.FailedAttempts...), v1alpha1.FailedAttempt{
		Driver: ns.Spec.Driver, Attempt: ns.Spec.Attempt, Reason: reason, Time: metav1.NewTime(now),
		KernelRelease: v1alpha1.Truncate(ns.Status.Probe.Kernel.Release.Value, 256), Sensor: testedSensor(ns, r.AgentVersion),
	})
	if len(failed) > 16 {
		failed = failed[len(failed)-16:]
	}
	observeSelfTest(t)
	r.eventf(profile, nil, corev1.EventTypeWarning, "SelfTestFailed", "Verify",
		"Node %s: self-test failed with driver %s (attempt %d): %s", ns.Name, ns.Spec.Driver, ns.Spec.Attempt, reason)
	recordFailure(profile.Name, ns.Spec.Driver, t.Reason)
	d, err := r.decide(profile, ns, failed, fleet)
	if err != nil {
		return err
	}
	return r.assign(ctx, profile, ns, d, failed, false)
}

// chooseCanaries resolves the profile's canary nodes among the governed ones: those its canary
// selector matches, and count more chosen once and kept (the profile status records them).
func chooseCanaries(profile *v1alpha1.SecurityProfile, governed map[string]*corev1.Node) []string {
	c := profile.Spec.Rollout.Canary
	if c == nil {
		return nil
	}
	names := make([]string, 0, len(governed))
	matched := map[string]bool{}
	var sel labels.Selector
	if c.NodeSelector != nil {
		// validateSpec refused a selector that does not parse (InvalidSpec).
		sel, _ = metav1.LabelSelectorAsSelector(c.NodeSelector)
	}
	for name, n := range governed {
		names = append(names, name)
		if sel != nil && sel.Matches(labels.Set(n.Labels)) {
			matched[name] = true
		}
	}
	return rollout.ChooseCanaries(names, matched, int(ptr.Deref(c.Count, 0)), profile.Status.Canaries)
}

// boundedReasons shortens each reason to its field's bound: a reason quotes facts the agent
// reported, and one long fact must not make the API refuse the decision.
func boundedReasons(in []v1alpha1.DriverReason) []v1alpha1.DriverReason {
	out := make([]v1alpha1.DriverReason, len(in))
	for i, r := range in {
		r.Rule, r.Message, r.Reference = v1alpha1.Truncate(r.Rule, 128), v1alpha1.Truncate(r.Message, 1024), v1alpha1.Truncate(r.Reference, 512)
		out[i] = r
	}
	if len(out) > 16 {
		out = out[:16]
	}
	return out
}

func reasonsText(reasons []v1alpha1.DriverReason) string {
	parts := make([]string, 0, len(reasons))
	for _, r := range reasons {
		parts = append(parts, fmt.Sprintf("%s: %s", r.Driver, r.Message))
	}
	if len(parts) == 0 {
		return "the profile allows no driver"
	}
	return strings.Join(parts, "; ")
}

// ownCopy gives a NodeSensor listed from the cache without a copy (a shallow copy of the cache's
// object, sharing its maps and slices) data of its own, before it is changed or written: a
// write decodes the API's answer into the object it was given.
func ownCopy(ns *v1alpha1.NodeSensor) { *ns = *ns.DeepCopy() }

// errStaleCache says the informer cache has not yet seen this manager's own last writes.
var errStaleCache = errors.New("cache has not caught up with the last decisions")

// expectations remember the attempt each NodeSensor was last assigned, so a reconcile that reads
// a cache older than its own writes waits instead of pacing on stale phases (which could start
// more than maxUnavailable nodes at once). Keyed by UID: a NodeSensor deleted and created again
// under the same name starts afresh.
type expectations struct {
	mu       sync.Mutex
	attempts map[string]expected
}

type expected struct {
	uid     types.UID
	attempt int32
}

func (e *expectations) set(ns *v1alpha1.NodeSensor) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.attempts == nil {
		e.attempts = map[string]expected{}
	}
	e.attempts[ns.Name] = expected{uid: ns.UID, attempt: ns.Spec.Attempt}
}

func (e *expectations) forget(node string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.attempts, node)
}

// current reports whether the attempt recorded for the node is the object's attempt now; a
// record of another object or attempt is dropped.
func (e *expectations) current(ns *v1alpha1.NodeSensor) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	want, ok := e.attempts[ns.Name]
	if ok && (want.uid != ns.UID || want.attempt != ns.Spec.Attempt) {
		delete(e.attempts, ns.Name)
		return false
	}
	return ok
}

func (e *expectations) stale(ns *v1alpha1.NodeSensor) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	want, ok := e.attempts[ns.Name]
	return ok && want.uid == ns.UID && ns.Spec.Attempt < want.attempt
}
