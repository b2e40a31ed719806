package controllers

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/nodestate"
	"github.com/driverpilot/driverpilot/internal/rollout"
)

// Profile condition types and reasons.
const (
	ConditionReady       = "Ready"
	ConditionProgressing = "Progressing"
	ConditionDegraded    = "Degraded"
	ConditionConflict    = "Conflict"
	// ConditionBrownout is True while most of the profile's agents stopped reporting together.
	ConditionBrownout = "Brownout"

	ReasonInvalidSpec   = "InvalidSpec"
	ReasonAllVerified   = "AllNodesVerified"
	ReasonNodesPending  = "NodesPending"
	ReasonNoNodes       = "NoNodesSelected"
	ReasonRolloutPaused = "RolloutPaused"
	ReasonNodesFailed   = "NodesFailed"
	ReasonNoFailures    = "NoFailures"
	ReasonIdle          = "Idle"
	ReasonVerifying     = "Verifying"
	ReasonNodesConflict = "NodesGovernedByOtherProfile"
	ReasonCanaryFailed  = rollout.ReasonCanaryFailed
	ReasonCanarySilent  = rollout.ReasonCanarySilent
	ReasonBrownout      = "HeartbeatsExpiredTogether"
	ReasonNoBrownout    = "AgentsReporting"
)

func invalidSpecStatus(profile *v1alpha1.SecurityProfile, err error) v1alpha1.SecurityProfileStatus {
	st := *profile.Status.DeepCopy()
	st.ObservedGeneration = profile.Generation
	setCondition(&st, profile, ConditionReady, metav1.ConditionFalse, ReasonInvalidSpec, err.Error())
	setCondition(&st, profile, ConditionProgressing, metav1.ConditionFalse, ReasonInvalidSpec, "No node is started while the spec is invalid")
	return st
}

// buildStatus rolls the node phases up into the profile status, from scratch each time.
func buildStatus(profile *v1alpha1.SecurityProfile, p progress, lost map[string]string) v1alpha1.SecurityProfileStatus {
	st := *profile.Status.DeepCopy()
	st.ObservedGeneration = profile.Generation
	st.Nodes, st.Drivers = nodestate.Rollup(p.nodes)
	st.Nodes.UpToDate = int32(p.upToDate)
	st.Canaries = recordCanaries(p.canaries, profile.Status.Canaries)
	if p.fleet != nil {
		st.Fleet = p.fleet.counts()
	}
	n := st.Nodes
	switch {
	case n.Selected == 0:
		setCondition(&st, profile, ConditionReady, metav1.ConditionFalse, ReasonNoNodes, "The nodeSelector selects no node this profile governs")
	case n.Verified == n.Selected:
		setCondition(&st, profile, ConditionReady, metav1.ConditionTrue, ReasonAllVerified, fmt.Sprintf("All %d nodes verified", n.Selected))
	case n.Failed > 0:
		setCondition(&st, profile, ConditionReady, metav1.ConditionFalse, ReasonNodesFailed, fmt.Sprintf("%d of %d nodes have no supported driver", n.Failed, n.Selected))
	default:
		setCondition(&st, profile, ConditionReady, metav1.ConditionFalse, ReasonNodesPending, fmt.Sprintf("%d of %d nodes verified", n.Verified, n.Selected))
	}
	switch {
	case p.plan.Paused:
		reason := ReasonRolloutPaused
		if p.plan.Reason == ReasonCanaryFailed || p.plan.Reason == ReasonCanarySilent {
			reason = p.plan.Reason
		}
		setCondition(&st, profile, ConditionProgressing, metav1.ConditionFalse, reason, p.plan.Blocked)
	case n.Pending > 0 || n.UpToDate < n.Verified:
		msg := fmt.Sprintf("%d nodes verifying, %d pending, %d of %d verified nodes proven under the current spec and agent",
			p.plan.InFlight+len(p.plan.Start), n.Pending, n.UpToDate, n.Verified)
		if p.plan.Blocked != "" {
			msg += "; " + p.plan.Blocked
		}
		setCondition(&st, profile, ConditionProgressing, metav1.ConditionTrue, ReasonVerifying, msg)
	default:
		setCondition(&st, profile, ConditionProgressing, metav1.ConditionFalse, ReasonIdle, "No node is verifying")
	}
	if n.Failed > 0 {
		setCondition(&st, profile, ConditionDegraded, metav1.ConditionTrue, ReasonNodesFailed, fmt.Sprintf("%d nodes have no supported driver: see their NodeSensor reasons", n.Failed))
	} else {
		setCondition(&st, profile, ConditionDegraded, metav1.ConditionFalse, ReasonNoFailures, "No node failed every driver")
	}
	if p.brownout {
		setCondition(&st, profile, ConditionBrownout, metav1.ConditionTrue, ReasonBrownout, fmt.Sprintf(
			"The agents of %d of %d nodes stopped reporting together (at least %.0f%%, as the node lifecycle controller's unhealthy-zone threshold): "+
				"they are Unknown but no taint is added, since the cause is more likely the API server or the network than the nodes",
			p.expired, n.Selected, nodestate.BrownoutThreshold*100))
	} else {
		setCondition(&st, profile, ConditionBrownout, metav1.ConditionFalse, ReasonNoBrownout, fmt.Sprintf("%d of %d nodes' heartbeats expired", p.expired, n.Selected))
	}
	if len(lost) > 0 {
		setCondition(&st, profile, ConditionConflict, metav1.ConditionTrue, ReasonNodesConflict, conflictMessage(lost))
	} else {
		meta.RemoveStatusCondition(&st.Conditions, ConditionConflict)
	}
	return st
}

// maxRecordedCanaries is the bound of status.canaries.
const maxRecordedCanaries = 5000

// recordCanaries fits the canaries into status.canaries: past its bound, those recorded before
// (the count canaries' memory) come first; selector canaries are found again on every pass.
func recordCanaries(canaries, recorded []string) []string {
	if len(canaries) <= maxRecordedCanaries {
		return canaries
	}
	keep := map[string]bool{}
	for _, n := range recorded {
		if len(keep) < maxRecordedCanaries && slices.Contains(canaries, n) {
			keep[n] = true
		}
	}
	for _, n := range canaries {
		if len(keep) < maxRecordedCanaries {
			keep[n] = true
		}
	}
	out := make([]string, 0, len(keep))
	for _, n := range canaries {
		if keep[n] {
			out = append(out, n)
		}
	}
	return out
}

func setCondition(st *v1alpha1.SecurityProfileStatus, profile *v1alpha1.SecurityProfile, typ string, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: profile.Generation,
	})
}

// progressEvery is how often at most a profile's status is rewritten when only its progress
// moved (counts, messages): a fleet's rollout would otherwise rewrite it on every pass.
const progressEvery = 2 * time.Second

// writeStatus writes the status when it changed. A change of progress alone within
// progressEvery of the last write waits: the returned duration says when to write it.
func (r *SecurityProfileReconciler) writeStatus(ctx context.Context, profile *v1alpha1.SecurityProfile, st v1alpha1.SecurityProfileStatus) (time.Duration, error) {
	if equality.Semantic.DeepEqual(profile.Status, st) {
		return 0, nil
	}
	now := r.now()
	if last, ok := r.statusWritten.Load(profile.UID); ok && onlyProgress(profile.Status, st) {
		if wait := progressEvery - now.Sub(last.(time.Time)); wait > 0 {
			return wait, nil
		}
	}
	// A full update, not a merge patch: the API needs every count, and a stale read must conflict.
	profile.Status = st
	if err := r.Status().Update(ctx, profile); err != nil {
		return 0, fmt.Errorf("write profile status: %w", err)
	}
	r.statusWritten.Store(profile.UID, now)
	return 0, nil
}

// onlyProgress reports whether two statuses differ only in numbers: the counts, and the numbers
// in condition messages. A message that says something new (a rollout now waits for its
// canaries) is news, not progress.
func onlyProgress(a, b v1alpha1.SecurityProfileStatus) bool {
	if a.ObservedGeneration != b.ObservedGeneration || !slices.Equal(a.Canaries, b.Canaries) || len(a.Conditions) != len(b.Conditions) {
		return false
	}
	for _, c := range a.Conditions {
		d := meta.FindStatusCondition(b.Conditions, c.Type)
		if d == nil || d.Status != c.Status || d.Reason != c.Reason || digits.ReplaceAllString(d.Message, "#") != digits.ReplaceAllString(c.Message, "#") {
			return false
		}
	}
	return true
}

var digits = regexp.MustCompile(`[0-9]+`)

// parallelWrites bounds the API writes one reconcile has in flight at once.
const parallelWrites = 64

// forEach runs fn for each item with up to parallelWrites at once and joins the errors: one
// node's failure neither stops nor hides the others'.
func forEach[T any](ctx context.Context, items []T, fn func(T) error) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	sem := make(chan struct{}, parallelWrites)
	for _, it := range items {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(it); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
