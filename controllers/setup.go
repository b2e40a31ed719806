package controllers

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

// SetupWithManager wires the reconciler: a profile is reconciled when it changes, when one of
// its NodeSensors changes (heartbeats alone excepted: expiry is timed by RequeueAfter), when a
// node appears, goes or is relabelled, when one of its agent pods appears, goes, is bound or
// starts terminating, when a node's heartbeat Lease appears or is renewed after it expired, and
// when another profile changes (precedence moves nodes). The manager's cache must hold agent
// pods and agent Leases only (CacheOptions).
func (r *SecurityProfileReconciler) SetupWithManager(mgr ctrl.Manager) error {
	// FleetGroups are read, never watched: their informer starts with the cache, or the first
	// pass would stop for a second to start it.
	if _, err := mgr.GetCache().GetInformer(context.Background(), &v1alpha1.FleetGroup{}); err != nil {
		return fmt.Errorf("FleetGroup informer: %w", err)
	}
	nodes, err := mgr.GetCache().GetInformer(context.Background(), &corev1.Node{})
	if err != nil {
		return fmt.Errorf("Node informer: %w", err)
	}
	if r.nodeStore = informerStore(nodes); r.nodeStore == nil {
		return fmt.Errorf("the cache's Node informer (%T) has no store to read Nodes from", nodes)
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.SecurityProfile{}).
		Owns(&appsv1.DaemonSet{}).
		Watches(&v1alpha1.NodeSensor{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: o.(*v1alpha1.NodeSensor).Spec.Profile}}}
		}), builder.WithPredicates(notOnlyHeartbeat(r.HeartbeatTimeout, &r.live, r.now))).
		Watches(&corev1.Node{}, r.nodeHandler(), builder.WithPredicates(nodeMembershipChanged())).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			if p := o.GetLabels()[ProfileLabel]; p != "" && o.GetNamespace() == r.Agent.Namespace {
				return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: p}}}
			}
			return nil
		}), builder.WithPredicates(agentPodChanged())).
		Watches(&coordinationv1.Lease{}, handler.EnqueueRequestsFromMapFunc(r.profileOfLease), builder.WithPredicates(leaseRevived(r.HeartbeatTimeout, &r.live, r.now))).
		Watches(&v1alpha1.SecurityProfile{}, handler.EnqueueRequestsFromMapFunc(r.allProfiles), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// Profiles have disjoint nodes, and a pass mostly waits for its writes: several profiles
		// move on at once. (One profile is never reconciled twice at once.)
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrentProfiles}).
		Complete(r)
}

func (r *SecurityProfileReconciler) allProfiles(ctx context.Context, _ client.Object) []reconcile.Request {
	var list v1alpha1.SecurityProfileList
	if err := r.List(ctx, &list); err != nil {
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, p := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: p.Name}})
	}
	return reqs
}

// concurrentProfiles is how many profiles are reconciled at once.
const concurrentProfiles = 4

// nodeHandler enqueues, for a node that appears, goes or is relabelled, the profiles it concerns:
// those whose selector matches it before or after the change, and the one holding its NodeSensor.
// Not every profile: with many profiles a fleet's relabelling would wake each of them per node.
func (r *SecurityProfileReconciler) nodeHandler() handler.EventHandler {
	enqueue := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request], nodes ...client.Object) {
		for _, req := range r.profilesOfNode(ctx, nodes...) {
			q.Add(req)
		}
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q, e.Object)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q, e.ObjectOld, e.ObjectNew)
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q, e.Object)
		},
		GenericFunc: func(ctx context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q, e.Object)
		},
	}
}

// profilesOfNode returns the profiles whose selector matches any of the node's versions (a
// selector that does not parse matches: its profile decides what it holds), and the profile of
// the node's NodeSensor.
func (r *SecurityProfileReconciler) profilesOfNode(ctx context.Context, versions ...client.Object) []reconcile.Request {
	var list v1alpha1.SecurityProfileList
	if err := r.List(ctx, &list); err != nil {
		return r.allProfiles(ctx, nil)
	}
	want := map[string]bool{}
	for i := range list.Items {
		p := &list.Items[i]
		sel, err := nodeSelector(p)
		for _, n := range versions {
			if err != nil || sel.Matches(labels.Set(n.GetLabels())) {
				want[p.Name] = true
			}
		}
	}
	if len(versions) > 0 {
		ns := &v1alpha1.NodeSensor{}
		if err := r.Get(ctx, types.NamespacedName{Name: versions[0].GetName()}, ns); err == nil && ns.Spec.Profile != "" {
			want[ns.Spec.Profile] = true
		}
	}
	reqs := make([]reconcile.Request, 0, len(want))
	for name := range want {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: name}})
	}
	return reqs
}

// notOnlyHeartbeat drops NodeSensor updates that change nothing but the heartbeat, except the
// first heartbeat after an expiry (on the agent's clock or on the manager's): it brings the node
// back from Unknown. Every heartbeat is recorded as seen now (liveness).
func notOnlyHeartbeat(timeout time.Duration, live *liveness, now func() time.Time) predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, okO := e.ObjectOld.(*v1alpha1.NodeSensor)
		n, okN := e.ObjectNew.(*v1alpha1.NodeSensor)
		if !okO || !okN {
			return true
		}
		t := now()
		seen, known := live.observed(n.Name)
		if hb := n.Status.HeartbeatTime; hb != nil {
			live.observe(n.Name, hb.Time, t)
		}
		if known && t.Sub(seen) > timeout {
			return true
		}
		if hb := o.Status.HeartbeatTime; hb != nil && t.Sub(hb.Time) > timeout {
			return true
		}
		o, n = o.DeepCopy(), n.DeepCopy()
		o.Status.HeartbeatTime, n.Status.HeartbeatTime = nil, nil
		o.ResourceVersion, n.ResourceVersion = "", ""
		o.ManagedFields, n.ManagedFields = nil, nil
		return !equality.Semantic.DeepEqual(o.Spec, n.Spec) || !equality.Semantic.DeepEqual(o.Status, n.Status)
	}}
}

// AgentPodCache restricts the manager's cache of pods to the agent pods in its namespace: the
// manager watches no other pod, and its RBAC reaches pods only in that namespace. Use it as
// cache.Options.ByObject[&corev1.Pod{}].
func AgentPodCache(namespace string) cache.ByObject {
	return cache.ByObject{
		Namespaces: map[string]cache.Config{namespace: {}},
		Label:      labels.SelectorFromSet(labels.Set{AgentAppLabel: AgentAppName}),
	}
}

// agentPodChanged passes what decides a pod's replacement (creation, deletion, binding, the
// start of its termination, its template hash) and whether it runs its sensor (podTrouble), not
// other status churn.
func agentPodChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, okO := e.ObjectOld.(*corev1.Pod)
		n, okN := e.ObjectNew.(*corev1.Pod)
		if !okO || !okN {
			return true
		}
		ow, of := podTrouble(o)
		nw, nf := podTrouble(n)
		return (o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil) || o.Spec.NodeName != n.Spec.NodeName ||
			o.Annotations[templateHashAnnotation] != n.Annotations[templateHashAnnotation] ||
			(ow == "") != (nw == "") || of != nf
	}}
}

// nodeMembershipChanged passes node creation, deletion and label changes, not status churn.
func nodeMembershipChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		return !equality.Semantic.DeepEqual(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels())
	}}
}

// sortRequirements orders requirements fully (key, operator, values), so the rendered template,
// and so its hash, never depends on map order.
func sortRequirements(reqs []corev1.NodeSelectorRequirement) {
	key := func(r corev1.NodeSelectorRequirement) string {
		return r.Key + "\x00" + string(r.Operator) + "\x00" + strings.Join(r.Values, "\x00")
	}
	sort.SliceStable(reqs, func(i, j int) bool { return key(reqs[i]) < key(reqs[j]) })
}
