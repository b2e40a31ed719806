package controllers

import (
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

// CacheOptions is what the manager's cache holds: every object without its managed fields (the
// manager never reads them, and they are often the larger part of an object), Nodes trimmed to
// what the reconciler reads (TrimNode), NodeSensors without their checks' details
// (TrimNodeSensor), and only the agent pods and agent heartbeat Leases of its namespace. At fleet
// scale the Node and NodeSensor caches dominate the manager's memory.
func CacheOptions(namespace string) cache.Options {
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:           AgentPodCache(namespace),
			&coordinationv1.Lease{}: AgentLeaseCache(namespace),
			&corev1.Node{}:          {Transform: TrimNode},
			&v1alpha1.NodeSensor{}:  {Transform: TrimNodeSensor},
		},
	}
}

// TrimNode keeps of a Node what the reconciler uses: its metadata (labels for selectors, the
// resourceVersion for optimistic locks), its spec (taints, providerID), its conditions, and of
// its node info the kernel, OS image and architecture (what makes nodes alike for a predicted
// driver). The kubelet's image list, volumes, addresses, capacity and the rest of its node info
// go: nothing here reads them, and the taint patch is computed between two copies of the
// trimmed object, so it never writes them back.
func TrimNode(obj any) (any, error) {
	node, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	node.ManagedFields = nil
	info := node.Status.NodeInfo
	node.Status = corev1.NodeStatus{Conditions: node.Status.Conditions, NodeInfo: corev1.NodeSystemInfo{
		KernelVersion: info.KernelVersion, OSImage: info.OSImage, Architecture: info.Architecture,
	}}
	return node, nil
}

// TrimNodeSensor keeps of a NodeSensor what the manager reads: everything but its managed fields
// and the details of each self-test check (expected, observed, latency, method, message), which
// are for people (kubectl get nodesensor -o yaml); the manager reads a check's name and result.
// It writes only the spec, with patches computed between two copies of the trimmed object, so
// it never writes them back.
func TrimNodeSensor(obj any) (any, error) {
	ns, ok := obj.(*v1alpha1.NodeSensor)
	if !ok {
		return obj, nil
	}
	ns.ManagedFields = nil
	if t := ns.Status.SelfTest; t != nil {
		for i := range t.Checks {
			t.Checks[i] = v1alpha1.CheckResult{Name: t.Checks[i].Name, Result: t.Checks[i].Result}
		}
	}
	return ns, nil
}

// listNodes returns the cache's own Nodes, read from its Node informer's store: no copies (a
// NodeList would copy every Node struct, a fleet's worth of garbage per pass and profile). A pass
// reads them, and its writes copy first (setNodeCondition, setTaint; removeNodeCondition is
// given a Node read afresh).
func (r *SecurityProfileReconciler) listNodes() []*corev1.Node {
	items := r.nodeStore.List()
	nodes := make([]*corev1.Node, 0, len(items))
	for _, it := range items {
		if n, ok := it.(*corev1.Node); ok {
			nodes = append(nodes, n)
		}
	}
	return nodes
}

// informerStore is an informer's store, when the informer is client-go's (as the manager's
// cache's are); nil otherwise.
func informerStore(inf cache.Informer) toolscache.Store {
	if s, ok := inf.(interface{ GetStore() toolscache.Store }); ok {
		return s.GetStore()
	}
	return nil
}
