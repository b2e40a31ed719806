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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
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
}

// advance moves each node on: a failed attempt falls back to the next driver, and queued nodes
// get their driver as the rollout allows.
func (r *SecurityProfileReconciler) advance(ctx context.Context, profile *v1alpha1.SecurityProfile, governed map[string]*corev1.Node, sensors map[string]*v1alpha1.NodeSensor, now time.Time) (progress, error) {
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
	phases := map[string]nodestate.Phase{}
	decisions := map[string]selection.Decision{}
	for _, name := range names {
		ns := sensors[name]
		phase := nodestate.Classify(ns, now, r.HeartbeatTimeout)
		switch phase {
		case nodestate.AttemptFailed:
			// Fallback does not wait for a slot: the node is already verifying.
			if err := r.fallback(ctx, profile, ns, now); err != nil {
				return progress{}, err
			}
			phase = nodestate.Classify(ns, now, r.HeartbeatTimeout)
		case nodestate.Verified:
			switch {
			case nodestate.NeedsReverify(ns, r.AgentVersion):
				d, err := r.decide(profile, ns, ns.Spec.FailedAttempts)
				if err != nil {
					return progress{}, err
				}
				decisions[name] = d
				phase = nodestate.Reverify
			case nodestate.ProvedByOlderAgent(ns, r.AgentVersion):
				// A canary proven by the old agent does not open the upgrade to the others.
				phase = nodestate.Outdated
			}
		case nodestate.Queued, nodestate.NoSupportedDriver:
			d, err := r.decide(profile, ns, ns.Spec.FailedAttempts)
			if err != nil {
				return progress{}, err
			}
			decisions[name] = d
			switch {
			case d.Driver == "" && phase == nodestate.Queued:
				// Nothing to verify: answer at once, without taking a rollout slot.
				if err := r.assign(ctx, profile, ns, d, ns.Spec.FailedAttempts); err != nil {
					return progress{}, err
				}
				phase = nodestate.NoSupportedDriver
			case d.Driver != "" && phase == nodestate.NoSupportedDriver:
				// The profile now allows a driver that was not allowed before: queue again.
				phase = nodestate.Queued
			}
		}
		phases[name] = phase
	}

	nodes := make([]nodestate.Node, 0, len(names))
	for _, name := range names {
		stalled := phases[name] == nodestate.HeartbeatExpired && nodestate.StalledWhileVerifying(sensors[name], now)
		nodes = append(nodes, nodestate.Node{Name: name, Phase: phases[name], Driver: sensors[name].Spec.Driver, Stalled: stalled})
	}
	maxUnavailable, err := rollout.ResolveMaxUnavailable(profile.Spec.Rollout.MaxUnavailable, len(names))
	if err != nil {
		return progress{}, err
	}
	plan := rollout.Decide(rollout.Input{
		Nodes:           nodes,
		Canaries:        canaries(profile, governed),
		MaxUnavailable:  maxUnavailable,
		PauseOnFailures: int(profile.Spec.Rollout.PauseOnFailures),
	})
	if err := forEach(ctx, plan.Start, func(name string) error {
		return r.assign(ctx, profile, sensors[name], decisions[name], sensors[name].Spec.FailedAttempts)
	}); err != nil {
		return progress{}, err
	}
	for _, name := range plan.Start {
		phases[name] = nodestate.Classify(sensors[name], now, r.HeartbeatTimeout)
	}
	for i := range nodes {
		nodes[i].Phase = phases[nodes[i].Name]
		nodes[i].Driver = sensors[nodes[i].Name].Spec.Driver
	}
	observeNodes(profile.Name, nodes)
	return progress{phases: phases, nodes: nodes, plan: plan}, nil
}

func (r *SecurityProfileReconciler) decide(profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor, failed []v1alpha1.FailedAttempt) (selection.Decision, error) {
	return selection.Decide(selection.Input{
		Facts:          *ns.Status.Probe,
		Policy:         profile.Spec.Drivers,
		Sensor:         profile.Spec.Sensor,
		KnownIssues:    r.KnownIssues,
		FailedAttempts: onKernel(failed, ns.Status.Probe.Kernel.Release.Value),
	})
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
// failed replaces the recorded failed attempts.
func (r *SecurityProfileReconciler) assign(ctx context.Context, profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor, d selection.Decision, failed []v1alpha1.FailedAttempt) error {
	base := ns.DeepCopy()
	ns.Spec.FailedAttempts = failed
	ns.Spec.Attempt++
	ns.Spec.Driver = d.Driver
	ns.Spec.Candidates = d.Candidates
	ns.Spec.Reasons = d.Reasons
	copySettings(profile, &ns.Spec)
	if err := r.Patch(ctx, ns, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("assign driver to %s: %w", ns.Name, err)
	}
	r.expect.set(ns)
	if d.Driver == "" {
		r.Recorder.Eventf(profile, nil, corev1.EventTypeWarning, "NoSupportedDriver", "SelectDriver",
			"Node %s: no supported driver: %s", ns.Name, reasonsText(d.Reasons))
		recordFailure(profile.Name, "", "NoSupportedDriver")
	} else {
		r.Recorder.Eventf(profile, nil, corev1.EventTypeNormal, "DriverSelected", "SelectDriver",
			"Node %s: driver %s (attempt %d); candidates %v", ns.Name, d.Driver, ns.Spec.Attempt, d.Candidates)
	}
	log.FromContext(ctx).V(1).Info("Driver assigned", "node", ns.Name, "driver", d.Driver, "attempt", ns.Spec.Attempt)
	return nil
}

// fallback records the failed attempt and assigns the next eligible driver, if any.
func (r *SecurityProfileReconciler) fallback(ctx context.Context, profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor, now time.Time) error {
	t := ns.Status.SelfTest
	reason := t.Reason
	if t.Message != "" {
		reason += ": " + t.Message
	}
	if len(reason) > 1000 {
		reason = reason[:1000]
	}
	failed := append(append([]v1alpha1.FailedAttempt(nil), ns.Spec.FailedAttempts...), v1alpha1.FailedAttempt{
		Driver: ns.Spec.Driver, Attempt: ns.Spec.Attempt, Reason: reason, Time: metav1.NewTime(now),
		KernelRelease: ns.Status.Probe.Kernel.Release.Value,
	})
	if len(failed) > 16 {
		failed = failed[len(failed)-16:]
	}
	observeSelfTest(t)
	r.Recorder.Eventf(profile, nil, corev1.EventTypeWarning, "SelfTestFailed", "Verify",
		"Node %s: self-test failed with driver %s (attempt %d): %s", ns.Name, ns.Spec.Driver, ns.Spec.Attempt, reason)
	recordFailure(profile.Name, ns.Spec.Driver, t.Reason)
	d, err := r.decide(profile, ns, failed)
	if err != nil {
		return err
	}
	return r.assign(ctx, profile, ns, d, failed)
}

// canaries resolves the profile's canary nodes among the governed ones.
func canaries(profile *v1alpha1.SecurityProfile, governed map[string]*corev1.Node) map[string]bool {
	c := profile.Spec.Rollout.Canary
	if c == nil {
		return nil
	}
	out := map[string]bool{}
	if c.NodeSelector != nil {
		if sel, err := metav1.LabelSelectorAsSelector(c.NodeSelector); err == nil {
			for name, n := range governed {
				if sel.Matches(labels.Set(n.Labels)) {
					out[name] = true
				}
			}
		}
	}
	if c.Count != nil {
		names := make([]string, 0, len(governed))
		for name := range governed {
			if !out[name] {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		for i := 0; i < int(*c.Count) && i < len(names); i++ {
			out[names[i]] = true
		}
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

func (e *expectations) stale(ns *v1alpha1.NodeSensor) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	want, ok := e.attempts[ns.Name]
	return ok && want.uid == ns.UID && ns.Spec.Attempt < want.attempt
}
