package controllers

import (
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CacheOptions is what the manager's cache holds: every object without its managed fields (the
// manager never reads them, and they are often the larger part of an object), Nodes trimmed to
// what the reconciler reads (TrimNode), and only the agent pods and agent heartbeat Leases of its
// namespace. At fleet scale the Node cache dominates the manager's memory.
func CacheOptions(namespace string) cache.Options {
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:           AgentPodCache(namespace),
			&coordinationv1.Lease{}: AgentLeaseCache(namespace),
			&corev1.Node{}:          {Transform: TrimNode},
		},
	}
}

// TrimNode keeps of a Node what the reconciler uses: its metadata (labels for selectors, the
// resourceVersion for optimistic locks), its spec (taints, providerID) and its conditions. The
// kubelet's image list, volumes, addresses, capacity and node info go: nothing here reads them,
// and the taint patch is computed between two copies of the trimmed object, so it never writes
// them back.
func TrimNode(obj any) (any, error) {
	node, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	node.ManagedFields = nil
	node.Status = corev1.NodeStatus{Conditions: node.Status.Conditions}
	return node, nil
}
