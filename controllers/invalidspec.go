package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/nodestate"
)

// keepNodesTrue maintains the truth of the nodes a profile already governs while the profile
// cannot be acted on (InvalidSpec): nothing is decided, adopted or released, but each node's
// condition and taint still follow its heartbeat (on the manager's clock) and its agent pod, and
// the pass comes back when the next heartbeat expires. It returns that wait.
func (r *SecurityProfileReconciler) keepNodesTrue(ctx context.Context, profile *v1alpha1.SecurityProfile) (time.Duration, error) {
	var list v1alpha1.NodeSensorList
	if err := r.List(ctx, &list, client.MatchingLabels{ProfileLabel: profile.Name}); err != nil {
		return 0, fmt.Errorf("list node sensors: %w", err)
	}
	sensors := map[string]*v1alpha1.NodeSensor{}
	governed := map[string]*corev1.Node{}
	for i := range list.Items {
		ns := &list.Items[i]
		if ns.Spec.Profile != profile.Name {
			continue
		}
		node := r.cachedNode(ns.Name)
		if node == nil {
			continue
		}
		sensors[ns.Name], governed[ns.Name] = ns, node
	}
	renewed, err := r.leaseRenewals(ctx)
	if err != nil {
		return 0, err
	}
	now := r.now()
	r.withObservedHeartbeats(sensors, renewed, now)
	p := progress{phases: map[string]nodestate.Phase{}}
	var nodes []nodestate.Node
	for name, ns := range sensors {
		phase := nodestate.Classify(ns, now, r.HeartbeatTimeout)
		p.phases[name] = phase
		nodes = append(nodes, nodestate.Node{Name: name, Phase: phase})
	}
	_, p.brownout = nodestate.Brownout(nodes)
	pods, err := r.listAgentPods(ctx, profile)
	if err != nil {
		return 0, err
	}
	p.pods = r.podTruthOf(profile, pods.Items, sensors)
	err = r.syncNodes(ctx, profile, governed, sensors, p, now)
	return r.nextHeartbeatDeadline(sensors, now), err
}

// cachedNode is the cache's Node of that name (not to be modified), or nil.
func (r *SecurityProfileReconciler) cachedNode(name string) *corev1.Node {
	if r.nodeStore == nil {
		return nil
	}
	it, ok, err := r.nodeStore.GetByKey(name)
	if err != nil || !ok {
		return nil
	}
	n, _ := it.(*corev1.Node)
	return n
}
