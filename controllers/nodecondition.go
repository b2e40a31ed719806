package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/nodestate"
)

// Reasons of the RuntimeSecurityReady node condition.
const (
	ReasonVerified          = "Verified"
	ReasonPending           = "Pending"
	ReasonNoSupportedDriver = "NoSupportedDriver"
	ReasonHeartbeatExpired  = "HeartbeatExpired"
	ReasonSensorUnhealthy   = "SensorUnhealthy"
	// ReasonDecisionFailed: the manager could not record its decision for the node (the error
	// is in the message and in an event); the other nodes moved on.
	ReasonDecisionFailed = "DecisionFailed"
	// ReasonSensorUnavailable: the node's agent runs another sensor than its spec names.
	ReasonSensorUnavailable = v1alpha1.ReasonSensorUnavailable
)

// nodeCondition is the RuntimeSecurityReady condition a phase calls for; failed is this pass's
// error on the node, if any.
func nodeCondition(ns *v1alpha1.NodeSensor, phase nodestate.Phase, failed error) corev1.NodeCondition {
	c := corev1.NodeCondition{Type: v1alpha1.NodeConditionRuntimeSecurityReady}
	switch {
	case failed != nil && !phase.Proven():
		c.Status, c.Reason = corev1.ConditionUnknown, ReasonDecisionFailed
		c.Message = "The manager could not record its decision for this node (it retries): " + failed.Error()
	case phase.Proven():
		c.Status, c.Reason = corev1.ConditionTrue, ReasonVerified
		t := ns.Status.SelfTest
		checks := make([]string, 0, len(t.Checks))
		for _, ch := range t.Checks {
			checks = append(checks, string(ch.Name))
		}
		c.Message = fmt.Sprintf("Runtime security verified with driver %s: self-test passed (%s), attempt %d",
			ns.Spec.Driver, strings.Join(checks, ", "), t.Attempt)
	case phase == nodestate.NoSupportedDriver:
		c.Status, c.Reason = corev1.ConditionFalse, ReasonNoSupportedDriver
		c.Message = "No supported driver: " + reasonsText(ns.Spec.Reasons)
		if n := len(ns.Spec.FailedAttempts); n > 0 {
			c.Message += fmt.Sprintf("; %d self-test(s) failed, last with %s", n, ns.Spec.FailedAttempts[n-1].Driver)
		}
	case phase == nodestate.SensorUnhealthy:
		c.Status, c.Reason = corev1.ConditionFalse, ReasonSensorUnhealthy
		c.Message = fmt.Sprintf("The sensor stopped working after its self-test passed with driver %s; verified again after the next passing self-test", ns.Spec.Driver)
		if h := meta.FindStatusCondition(ns.Status.Conditions, v1alpha1.ConditionSensorHealthy); h != nil {
			c.Message += fmt.Sprintf(": %s: %s", h.Reason, h.Message)
		}
	case phase == nodestate.SensorUnavailable:
		c.Status, c.Reason = corev1.ConditionFalse, ReasonSensorUnavailable
		c.Message = fmt.Sprintf("The agent runs another sensor than this node's spec (%s) names, so driver %s is not proven; "+
			"it tests again once its pod is replaced: %s", orKind(ns.Spec.Sensor.Kind), orNone(ns.Spec.Driver), ns.Status.SelfTest.Message)
	case phase == nodestate.HeartbeatExpired:
		c.Status, c.Reason = corev1.ConditionUnknown, ReasonHeartbeatExpired
		c.Message = fmt.Sprintf("The agent stopped reporting (the manager last saw its heartbeat change at %s); driver %s is no longer proven",
			ns.Status.HeartbeatTime.UTC().Format(time.RFC3339), orNone(ns.Spec.Driver))
	default:
		c.Status, c.Reason = corev1.ConditionUnknown, ReasonPending
		c.Message = fmt.Sprintf("Verification pending: see `kubectl get nodesensor %s` for the probe, the driver decision and the self-test", ns.Name)
	}
	c.Message = truncateBytes(c.Message, 1024)
	return c
}

func orKind(k v1alpha1.SensorKind) string {
	if k == "" {
		return string(v1alpha1.SensorBuiltin)
	}
	return string(k)
}

func orNone(d v1alpha1.Driver) string {
	if d == "" {
		return "none"
	}
	return string(d)
}

// findCondition returns the node's RuntimeSecurityReady condition, or nil.
func findCondition(node *corev1.Node) *corev1.NodeCondition {
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == v1alpha1.NodeConditionRuntimeSecurityReady {
			return &node.Status.Conditions[i]
		}
	}
	return nil
}

// setNodeCondition writes the condition with a strategic-merge status patch keyed by type, so it
// never touches the kubelet's conditions. It writes only when status or reason change: the
// details live in the NodeSensor, and a quiet node costs no API writes. node may be the cache's
// own object and is never modified: the node as written comes back (node itself when nothing
// was written).
func setNodeCondition(ctx context.Context, c client.Client, node *corev1.Node, want corev1.NodeCondition, now time.Time) (*corev1.Node, error) {
	have := findCondition(node)
	if have != nil && have.Status == want.Status && have.Reason == want.Reason {
		return node, nil
	}
	// A node with no condition is already "not verified"; announcing Pending would cost one
	// write per node in every rollout for no new information.
	if have == nil && want.Reason == ReasonPending {
		return node, nil
	}
	want.LastHeartbeatTime = metav1.NewTime(now)
	want.LastTransitionTime = metav1.NewTime(now)
	if have != nil && have.Status == want.Status {
		want.LastTransitionTime = have.LastTransitionTime
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{want}}})
	if err != nil {
		return node, err
	}
	written := node.DeepCopy()
	if err := c.Status().Patch(ctx, written, client.RawPatch(types.StrategicMergePatchType, patch)); err != nil {
		return node, fmt.Errorf("set condition on node %s: %w", node.Name, err)
	}
	return written, nil
}

// removeNodeCondition deletes the condition with a strategic-merge delete directive.
func removeNodeCondition(ctx context.Context, c client.Client, node *corev1.Node) error {
	if findCondition(node) == nil {
		return nil
	}
	patch := fmt.Sprintf(`{"status":{"conditions":[{"type":%q,"$patch":"delete"}]}}`, v1alpha1.NodeConditionRuntimeSecurityReady)
	if err := c.Status().Patch(ctx, node, client.RawPatch(types.StrategicMergePatchType, []byte(patch))); err != nil {
		return client.IgnoreNotFound(fmt.Errorf("remove condition from node %s: %w", node.Name, err))
	}
	return nil
}

// setTaint adds or removes the unverified NoSchedule taint. The taint list is replaced whole, so
// the patch carries the node's resourceVersion; on a conflict (the kubelet or another controller
// wrote the node) it reads the node again from the API server and retries. node may be the
// cache's own object: it is copied before it is written.
func setTaint(ctx context.Context, c client.Client, reader client.Reader, node *corev1.Node, want bool) error {
	first := true
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if !first {
			fresh := &corev1.Node{}
			if err := reader.Get(ctx, client.ObjectKeyFromObject(node), fresh); err != nil {
				return err
			}
			node = fresh
		}
		first = false
		idx := slices.IndexFunc(node.Spec.Taints, isUnverifiedTaint)
		if (idx >= 0) == want {
			return nil
		}
		base := node
		node = node.DeepCopy()
		if want {
			node.Spec.Taints = append(node.Spec.Taints, corev1.Taint{Key: v1alpha1.UnverifiedTaintKey, Effect: corev1.TaintEffectNoSchedule})
		} else {
			node.Spec.Taints = append(node.Spec.Taints[:idx:idx], node.Spec.Taints[idx+1:]...)
		}
		return c.Patch(ctx, node, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}))
	})
	if err != nil {
		return client.IgnoreNotFound(fmt.Errorf("taint node %s: %w", node.Name, err))
	}
	return nil
}

// syncNodes reflects each node's phase in its condition and, when the profile asks, its taint.
// In a brownout (most agents silent together) no taint is added: the outage is likely the
// control plane's or the network's, and tainting the whole profile would stop scheduling. A
// node whose agent went silent is tainted only after a grace (silentForTaint), so the first
// nodes of a brownout are not tainted before the others' heartbeats expire.
func (r *SecurityProfileReconciler) syncNodes(ctx context.Context, profile *v1alpha1.SecurityProfile, governed map[string]*corev1.Node, sensors map[string]*v1alpha1.NodeSensor, p progress, now time.Time) error {
	names := make([]string, 0, len(sensors))
	for name := range sensors {
		names = append(names, name)
	}
	return forEach(ctx, names, func(name string) error {
		ns, node, phase := sensors[name], governed[name], p.phases[name]
		want := withPodTruth(nodeCondition(ns, phase, p.errs[name]), ns, phase, p.pods.why[name], p.pods.failed[name])
		verified := want.Status == corev1.ConditionTrue
		written := node
		// (Written by the last pass over the node the cache still shows: not again.)
		if !r.recent.conditionPending(name, node.ResourceVersion, string(want.Status), want.Reason) {
			var err error
			if written, err = setNodeCondition(ctx, r.Client, node, want, now); err != nil {
				return err
			}
			if written != node {
				r.recent.conditionWritten(name, node.ResourceVersion, string(want.Status), want.Reason)
			}
		}
		if written != node && verified {
			observeSelfTest(ns.Status.SelfTest)
			r.batchedEvent(ctx, profile, "NodeVerified", "Verify", "verified with driver "+string(ns.Spec.Driver), name)
		}
		node = written // its new resourceVersion, for the taint's optimistic lock
		taint := profile.Spec.Enforcement.Taint && !verified
		if taint && !hasTaint(node) && (p.brownout || (phase == nodestate.HeartbeatExpired && !r.silentForTaint(ns, now))) {
			return nil
		}
		return setTaint(ctx, r.Client, r.reader(), node, taint)
	})
}

// withPodTruth overrides the condition when the node's agent pod does not run its sensor now: a
// proven node is not True without it, and a stuck pod's own words (an image that cannot be
// pulled, a crash loop) replace a Pending or an expired heartbeat. The answer of the selection
// (no supported driver) stands.
func withPodTruth(c corev1.NodeCondition, ns *v1alpha1.NodeSensor, phase nodestate.Phase, why string, failed bool) corev1.NodeCondition {
	if why == "" || phase == nodestate.NoSupportedDriver || (!phase.Proven() && !failed) {
		return c
	}
	c.Status, c.Reason = corev1.ConditionFalse, ReasonAgentNotRunning
	c.Message = truncateBytes(fmt.Sprintf("No sensor runs on this node now: %s; driver %s is not proven here until a new self-test passes", why, orNone(ns.Spec.Driver)), 1024)
	return c
}

// silentForTaint reports whether a node's agent has been silent long enough to taint the node:
// one more heartbeat timeout after its heartbeat expired. Heartbeats of a brownout do not all
// expire at once; the wait lets the brownout show before the first silent nodes are tainted.
func (r *SecurityProfileReconciler) silentForTaint(ns *v1alpha1.NodeSensor, now time.Time) bool {
	hb := ns.Status.HeartbeatTime
	return hb != nil && now.Sub(hb.Time) > 2*r.HeartbeatTimeout
}

func hasTaint(node *corev1.Node) bool {
	return slices.IndexFunc(node.Spec.Taints, isUnverifiedTaint) >= 0
}

func isUnverifiedTaint(t corev1.Taint) bool { return t.Key == v1alpha1.UnverifiedTaintKey }
