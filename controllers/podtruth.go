package controllers

import (
	"fmt"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

// ReasonAgentNotRunning: the node's agent pod is missing or does not run its sensor now (not
// scheduled, pending, an image that cannot be pulled, an init container failing, crash-looping,
// not ready, terminating). The message carries the pod's own reason and message.
const ReasonAgentNotRunning = "AgentNotRunning"

// podTrouble says why a pod does not run its sensor now: failed is true when the pod is stuck
// (a reason a person must act on), false when it is only starting or stopping. "" means running
// and ready.
func podTrouble(pod *corev1.Pod) (why string, failed bool) {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return fmt.Sprintf("agent pod %s is not scheduled%s", pod.Name, words(c.Reason, c.Message)), true
		}
	}
	if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		return fmt.Sprintf("agent pod %s ended (%s)%s", pod.Name, pod.Status.Phase, words(pod.Status.Reason, pod.Status.Message)), true
	}
	check := func(kind string, statuses []corev1.ContainerStatus, init bool) (string, bool) {
		for _, cs := range statuses {
			switch {
			case cs.State.Waiting != nil:
				w := cs.State.Waiting
				starting := w.Reason == "ContainerCreating" || w.Reason == "PodInitializing" || w.Reason == ""
				return fmt.Sprintf("agent pod %s: %s %s%s", pod.Name, kind, cs.Name, words(orText(w.Reason, "Waiting"), w.Message)), !starting
			case cs.State.Terminated != nil && (!init || cs.State.Terminated.ExitCode != 0):
				t := cs.State.Terminated
				return fmt.Sprintf("agent pod %s: %s %s%s", pod.Name, kind, cs.Name, words(fmt.Sprintf("%s (exit code %d)", orText(t.Reason, "Terminated"), t.ExitCode), t.Message)), true
			case !init && !cs.Ready:
				return fmt.Sprintf("agent pod %s: %s %s is not ready", pod.Name, kind, cs.Name), cs.RestartCount > 0
			}
		}
		return "", false
	}
	if why, failed := check("init container", pod.Status.InitContainerStatuses, true); why != "" {
		return why, failed
	}
	if why, failed := check("container", pod.Status.ContainerStatuses, false); why != "" {
		return why, failed
	}
	// (A terminating pod whose containers still run still runs its sensor: its grace period.)
	if pod.Status.Phase != corev1.PodRunning {
		return fmt.Sprintf("agent pod %s is %s", pod.Name, orText(string(pod.Status.Phase), "Pending")), false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status != corev1.ConditionTrue {
			return fmt.Sprintf("agent pod %s is not ready%s", pod.Name, words(c.Reason, c.Message)), false
		}
	}
	return "", false
}

// words renders a Kubernetes reason and message after a colon each, leaving out the empty ones.
func words(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		if p != "" {
			b.WriteString(": " + p)
		}
	}
	return b.String()
}

func orText(s, otherwise string) string {
	if s == "" {
		return otherwise
	}
	return s
}

// podTruth is what the agent pods of a profile say about each node now.
type podTruth struct {
	// why is, per node, why no agent pod runs its sensor there ("" absent: one runs); failed
	// marks the stuck ones.
	why    map[string]string
	failed map[string]bool
}

// agentPodSightings remember the NodeSensors (by UID, with their profile) on whose node the
// manager has seen an agent pod: a node whose pod is gone afterwards has no sensor running. (A
// node never seen with a pod is one whose agent is not a pod of this cluster's: simulated or
// run by hand.)
type agentPodSightings struct{ m sync.Map }

// podTruthOf says, for each NodeSensor's node, whether one of the profile's agent pods runs its
// sensor there now, and forgets the sightings of the profile's NodeSensors that are gone.
func (r *SecurityProfileReconciler) podTruthOf(profile *v1alpha1.SecurityProfile, pods []corev1.Pod, sensors map[string]*v1alpha1.NodeSensor) podTruth {
	out := podTruth{why: map[string]string{}, failed: map[string]bool{}}
	byNode := map[string][]*corev1.Pod{}
	for i := range pods {
		if n := pods[i].Spec.NodeName; n != "" {
			byNode[n] = append(byNode[n], &pods[i])
		}
	}
	current := make(map[types.UID]bool, len(sensors))
	for name, ns := range sensors {
		current[ns.UID] = true
		list := byNode[name]
		if len(list) == 0 {
			if _, seen := r.podSeen.m.Load(ns.UID); seen {
				out.why[name] = fmt.Sprintf("no agent pod runs on this node (the agent DaemonSet %s/%s schedules none here)", r.Agent.Namespace, agentDaemonSetName(profile))
				out.failed[name] = true
			}
			continue
		}
		r.podSeen.m.Store(ns.UID, profile.Name)
		// One pod running its sensor is enough (an outdated pod may still run while its
		// replacement starts); otherwise the stuck pod's words win over a starting one's.
		why, failed := "", false
		for _, pod := range list {
			w, f := podTrouble(pod)
			if w == "" {
				why, failed = "", false
				break
			}
			if why == "" || (f && !failed) {
				why, failed = w, f
			}
		}
		if why != "" {
			out.why[name], out.failed[name] = truncateBytes(why, 700), failed
		}
	}
	r.podSeen.m.Range(func(uid, p any) bool {
		if p == profile.Name && !current[uid.(types.UID)] {
			r.podSeen.m.Delete(uid)
		}
		return true
	})
	return out
}

// forget drops the pod sighting of a NodeSensor that is gone.
func (s *agentPodSightings) forget(uid types.UID) { s.m.Delete(uid) }
