package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/nodestate"
	"github.com/driverpilot/driverpilot/internal/prediction"
)

// predict plans the governed nodes without a NodeSensor (internal/prediction): which start with
// the driver their like nodes proved, which are created to be probed alone now, and which wait
// uncreated for the first node like them. Canaries are always probed alone. With learning off
// every node learns alone; with the taint enforced every node gets its NodeSensor at once (the
// manager taints only nodes with one).
func (r *SecurityProfileReconciler) predict(profile *v1alpha1.SecurityProfile, governed map[string]*corev1.Node, sensors map[string]*v1alpha1.NodeSensor,
	missing []string, phases map[string]nodestate.Phase, current, released, canary map[string]bool, now time.Time) prediction.Plan {
	if !profile.Spec.Fleet.LearningOn() || profile.Spec.Enforcement.Taint {
		return prediction.Plan{Create: missing}
	}
	known := make([]prediction.Known, 0, len(sensors))
	for name, ns := range sensors {
		phase := phases[name]
		busy := phase == nodestate.Queued || phase == nodestate.Reverify ||
			(phase == nodestate.AwaitingProbe && now.Sub(ns.CreationTimestamp.Time) <= r.HeartbeatTimeout) ||
			(phase.InFlight() && !released[name])
		k := prediction.Known{Name: name, Key: prediction.KeyOf(governed[name]), Driver: ns.Spec.Driver, Proven: current[name],
			FirstChoice: len(ns.Spec.FailedAttempts) == 0, Busy: busy}
		for _, f := range ns.Spec.FailedAttempts {
			k.Failed = append(k.Failed, f.Driver)
		}
		known = append(known, k)
	}
	slices.SortFunc(known, func(a, b prediction.Known) int { return strings.Compare(a.Name, b.Name) })
	var first []string
	likes := make([]prediction.Missing, 0, len(missing))
	for _, name := range missing {
		if canary[name] {
			first = append(first, name)
			continue
		}
		likes = append(likes, prediction.Missing{Name: name, Key: prediction.KeyOf(governed[name])})
	}
	plan := prediction.Decide(known, likes, true)
	plan.Create = append(first, plan.Create...)
	return plan
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
