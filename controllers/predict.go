package controllers

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/nodestate"
	"github.com/driverpilot/driverpilot/internal/prediction"
	"github.com/driverpilot/driverpilot/internal/selection"
)

// predict plans the governed nodes without a NodeSensor (internal/prediction): which start with
// the driver their like nodes proved, which are created to be probed alone now, and which wait
// uncreated for the first node like them. Canaries are always probed alone. With learning off
// every node learns alone; with the taint enforced every node gets its NodeSensor at once (the
// manager taints only nodes with one).
func (r *SecurityProfileReconciler) predict(profile *v1alpha1.SecurityProfile, governed map[string]*corev1.Node, sensors map[string]*v1alpha1.NodeSensor,
	missing []string, pending map[string]bool, p *progress, decisions map[string]selection.Decision, current, mispredicted, released, canary map[string]bool, now time.Time) prediction.Plan {
	if !profile.Spec.Fleet.LearningOn() || profile.Spec.Enforcement.Taint {
		return prediction.Plan{Create: missing}
	}
	known := make([]prediction.Known, 0, len(governed))
	for name, ns := range sensors {
		k := prediction.Known{Name: name, Key: prediction.KeyOf(governed[name]), Driver: ns.Spec.Driver, Proven: current[name],
			FirstChoice: len(ns.Spec.FailedAttempts) == 0, Mispredicted: mispredicted[name], Busy: r.holdsKind(ns, p.phases[name], decisions, released, now),
			Decided: ns.Spec.PredictedFrom == "" && ns.Status.Probe != nil}
		for _, f := range ns.Spec.FailedAttempts {
			k.Failed = append(k.Failed, f.Driver)
		}
		known = append(known, k)
	}
	for name := range pending {
		// Created by an earlier pass, not in the cache yet: the first of its kind, maybe.
		known = append(known, prediction.Known{Name: name, Key: prediction.KeyOf(governed[name]), Busy: true})
	}
	likes := make([]prediction.Missing, 0, len(missing))
	var first []string // (missing is sorted, so are they)
	for _, name := range missing {
		key := prediction.KeyOf(governed[name])
		if canary[name] {
			first = append(first, name)
			known = append(known, prediction.Known{Name: name, Key: key, Busy: true})
			continue
		}
		likes = append(likes, prediction.Missing{Name: name, Key: key})
	}
	plan := prediction.Decide(known, likes)
	plan.Create = append(first, plan.Create...)
	return plan
}

// holdsKind reports whether a node holds back the nodes like it: a node never proven that is on
// its way (awaiting its probe, queued with a decision, or verifying), for a bounded time. A
// proven node re-verifying does not: new nodes of its kind go on as they did before.
func (r *SecurityProfileReconciler) holdsKind(ns *v1alpha1.NodeSensor, phase nodestate.Phase, decisions map[string]selection.Decision,
	released map[string]bool, now time.Time) bool {
	age := now.Sub(ns.CreationTimestamp.Time)
	switch {
	case phase == nodestate.AwaitingProbe:
		return age <= r.HeartbeatTimeout
	case phase == nodestate.Queued:
		_, decided := decisions[ns.Name]
		return decided && age <= r.groupPatience()
	case phase.InFlight() && phase != nodestate.Reverifying:
		return !released[ns.Name]
	}
	return false
}

// predictedUnanswered reports whether a node created with a predicted driver has heard nothing
// from its agent within the heartbeat timeout: no facts, no heartbeat.
func (r *SecurityProfileReconciler) predictedUnanswered(ns *v1alpha1.NodeSensor, now time.Time) bool {
	return ns.Spec.PredictedFrom != "" && ns.Spec.Driver != "" && ns.Status.Probe == nil && ns.Status.HeartbeatTime == nil &&
		now.Sub(ns.CreationTimestamp.Time) > r.HeartbeatTimeout
}

// withdrawPrediction takes back the driver of a node whose agent never answered, which frees
// its rollout slot: an agent that comes later only probes (its attempt stays, so a late verdict
// for the prediction matches nothing) and the node is decided on its own facts.
func (r *SecurityProfileReconciler) withdrawPrediction(ctx context.Context, profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor) error {
	ownCopy(ns)
	base := ns.DeepCopy()
	driver := ns.Spec.Driver
	ns.Spec.Driver, ns.Spec.Candidates, ns.Spec.Reasons = "", nil, nil
	if err := r.Patch(ctx, ns, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("withdraw the predicted driver of %s: %w", ns.Name, err)
	}
	r.eventf(ns, profile, corev1.EventTypeWarning, "PredictionWithdrawn", "SelectDriver",
		"Node %s: no agent answered within %s; predicted driver %s withdrawn, the node is decided on its own facts once its agent reports them",
		ns.Name, r.HeartbeatTimeout, driver)
	return nil
}

// unconfirmedPrediction reports whether a node's driver was predicted and the manager has not
// yet checked it against the node's own facts: they are in, and the node is not verified yet
// (the check happens in the pass that would verify it, so a verified node was checked).
func unconfirmedPrediction(ns *v1alpha1.NodeSensor, node *corev1.Node) bool {
	if ns.Spec.PredictedFrom == "" || ns.Spec.Driver == "" || ns.Status.Probe == nil {
		return false
	}
	c := findCondition(node)
	return c == nil || c.Status != corev1.ConditionTrue
}

// createPredicted creates a node's NodeSensor with the driver its like nodes proved: attempt 1,
// their candidates and reasons, and the node it was predicted from. Its agent tests it at once
// and reports its facts with the verdict; the manager counts the proof once the node's own
// facts choose the same driver (advance).
func (r *SecurityProfileReconciler) createPredicted(ctx context.Context, profile *v1alpha1.SecurityProfile, node *corev1.Node, s prediction.Sample,
	sensors map[string]*v1alpha1.NodeSensor) (*v1alpha1.NodeSensor, error) {
	ns := newNodeSensor(profile, node)
	ns.Spec.Driver, ns.Spec.Attempt, ns.Spec.PredictedFrom = s.Driver, 1, s.From
	if like := sensors[s.From]; like != nil {
		ns.Spec.Candidates = slices.Clone(like.Spec.Candidates)
		ns.Spec.Reasons = boundedReasons(like.Spec.Reasons)
	}
	if err := r.Create(ctx, ns); err != nil {
		if apierrors.IsAlreadyExists(err) {
			// Created by a pass whose write the cache has not shown yet: it holds its slot.
			r.recent.created(ns.Name, time.Now(), true)
			return nil, nil
		}
		return nil, fmt.Errorf("create node sensor %s with predicted driver %s: %w", ns.Name, s.Driver, err)
	}
	r.recent.created(ns.Name, time.Now(), true)
	r.batchedEvent(ctx, profile, "DriverSelected", "SelectDriver", fmt.Sprintf("driver %s predicted from node %s", s.Driver, s.From), ns.Name)
	return ns, nil
}
