package controllers

import (
	"context"
	"fmt"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/nodestate"
)

// agentPods is where each node's agent pod stands against the profile's current pod template,
// and the outdated pod to delete per node. ok is false while the DaemonSet (as cached) does not
// carry the current template yet: a pod deleted then could come back outdated, so nothing is
// deleted, but the outdated pods still hold their proven nodes back from a new attempt.
type agentPods struct {
	state    map[string]nodestate.AgentPod
	outdated map[string]*corev1.Pod
	ok       bool
	// truth says, per node, whether an agent pod runs its sensor there now (podtruth.go).
	truth podTruth
}

// readAgentPods lists the profile's agent pods (from the cache of agent pods in the manager's
// namespace) and maps each node to the state of its pod. A node without a pod, or with a pod of
// the current template, is AgentCurrent: nothing to replace.
func (r *SecurityProfileReconciler) readAgentPods(ctx context.Context, profile *v1alpha1.SecurityProfile, sensors map[string]*v1alpha1.NodeSensor) (agentPods, error) {
	out := agentPods{state: map[string]nodestate.AgentPod{}, outdated: map[string]*corev1.Pod{}}
	pods, err := r.listAgentPods(ctx, profile)
	if err != nil {
		return out, err
	}
	// (Also without a DaemonSet: a node whose pods are gone has no sensor running.)
	out.truth = r.podTruthOf(profile, pods.Items, sensors)
	want := agentDaemonSet(profile, r.Agent).Spec.Template.Annotations[templateHashAnnotation]
	ds := &appsv1.DaemonSet{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: r.Agent.Namespace, Name: agentDaemonSetName(profile)}, ds); err != nil {
		if apierrors.IsNotFound(err) {
			return out, nil
		}
		return out, fmt.Errorf("read agent daemonset: %w", err)
	}
	out.ok = ds.Spec.Template.Annotations[templateHashAnnotation] == want
	listed := map[types.UID]bool{}
	for i := range pods.Items {
		pod := &pods.Items[i]
		listed[pod.UID] = true
		node := pod.Spec.NodeName
		if node == "" || pod.Annotations[templateHashAnnotation] == want {
			continue
		}
		switch {
		case pod.DeletionTimestamp == nil && !r.replaced.deleting(pod.UID):
			// (A pod this manager deleted is terminating even where the cache does not say so
			// yet: deleting it again would free its slot for another node.)
			out.state[node] = nodestate.AgentOutdated
			out.outdated[node] = pod
		case out.state[node] != nodestate.AgentOutdated:
			out.state[node] = nodestate.AgentTerminating
		}
	}
	r.replaced.prune(profile.Name, listed)
	for node, ns := range sensors {
		if out.state[node] == nodestate.AgentCurrent && r.replaced.has(ns) {
			out.state[node] = nodestate.AgentReplaced
		}
	}
	return out, nil
}

// listAgentPods lists the profile's agent pods from the cache of agent pods in the manager's
// namespace.
func (r *SecurityProfileReconciler) listAgentPods(ctx context.Context, profile *v1alpha1.SecurityProfile) (*corev1.PodList, error) {
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.InNamespace(r.Agent.Namespace), client.MatchingLabels(agentSelector(profile).MatchLabels)); err != nil {
		return nil, fmt.Errorf("list agent pods: %w", err)
	}
	return &pods, nil
}

// replaceAgentPod deletes a node's outdated agent pod (the DaemonSet creates its replacement
// from the current template) and says why in an event on the node's NodeSensor. A proven node
// is remembered: it gets its new attempt once the old pod is gone, before the new pod would
// test the old one.
func (r *SecurityProfileReconciler) replaceAgentPod(ctx context.Context, profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor, pod *corev1.Pod, phase nodestate.Phase) error {
	uid := pod.UID
	err := r.Delete(ctx, pod, client.Preconditions{UID: &uid})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("replace agent pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	r.replaced.deleted(profile.Name, uid)
	why := fmt.Sprintf("the node is %s, not protected: its new pod costs it nothing", phase)
	if phase.Proven() {
		r.replaced.set(ns)
		why = "the rollout lets the node re-verify under the new template (canaries first, within maxUnavailable); it stays verified on its proof meanwhile"
	}
	r.eventf(ns, profile, corev1.EventTypeNormal, ReasonAgentReplaced, "ReplaceAgent",
		"Node %s: agent pod %s runs an outdated pod template and was deleted: %s", ns.Name, pod.Name, why)
	return nil
}

// ReasonAgentReplaced is the reason of the event recorded when the manager replaces an agent pod.
const ReasonAgentReplaced = "AgentReplaced"

// replacements remember the proven nodes whose outdated agent pod the manager deleted, by the
// NodeSensor's UID and attempt: such a node holds its rollout slot and gets its new attempt once
// the old pod is gone. A new attempt ends the memory. Lost on a restart, the node then waits
// for a slot again like any node to re-verify: slower, never less paced.
type replacements struct {
	nodes expectations
	mu    sync.Mutex
	// pods are the agent pods this manager deleted, by UID, with their profile, until they are
	// gone from the cache.
	pods map[types.UID]string
}

func (m *replacements) set(ns *v1alpha1.NodeSensor) { m.nodes.set(ns) }
func (m *replacements) forget(node string)          { m.nodes.forget(node) }

// has reports whether the node's pod was replaced for its current attempt.
func (m *replacements) has(ns *v1alpha1.NodeSensor) bool { return m.nodes.current(ns) }

func (m *replacements) deleted(profile string, uid types.UID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pods == nil {
		m.pods = map[types.UID]string{}
	}
	m.pods[uid] = profile
}

func (m *replacements) deleting(uid types.UID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.pods[uid]
	return ok
}

// prune forgets the deleted pods of a profile that the cache no longer lists.
func (m *replacements) prune(profile string, listed map[types.UID]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for uid, p := range m.pods {
		if p == profile && !listed[uid] {
			delete(m.pods, uid)
		}
	}
}
