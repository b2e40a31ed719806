package controllers

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/heartbeat"
)

// AgentLeaseCache restricts the manager's cache of Leases to its namespace: the agents' heartbeat
// Leases and its own leader-election Lease (not the kubelets' node Leases). The agents' Leases
// carry no label (each renewal rewrites the whole Lease); a Lease counts as a node's heartbeat
// by its name. Use it as cache.Options.ByObject[&coordinationv1.Lease{}].
func AgentLeaseCache(namespace string) cache.ByObject {
	return cache.ByObject{Namespaces: map[string]cache.Config{namespace: {}}}
}

// leaseRenewals reads when each node's agent last renewed its heartbeat Lease.
func (r *SecurityProfileReconciler) leaseRenewals(ctx context.Context) (map[string]time.Time, error) {
	var leases coordinationv1.LeaseList
	if err := r.List(ctx, &leases, client.InNamespace(r.Agent.Namespace), client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list heartbeat leases: %w", err)
	}
	out := make(map[string]time.Time, len(leases.Items))
	for i := range leases.Items {
		out[leases.Items[i].Name] = heartbeat.RenewTime(&leases.Items[i])
	}
	return out, nil
}

// withObservedHeartbeats sets each NodeSensor's heartbeat, in the manager's copy only, to when
// the manager saw the agent's newest heartbeat (its status report or its Lease renewal, whichever
// is newer) change: liveness is measured on the manager's clock. (A NodeSensor listed without a
// copy is a shallow copy of the cache's: replacing its status's heartbeat pointer leaves the
// cache be.)
func (r *SecurityProfileReconciler) withObservedHeartbeats(sensors map[string]*v1alpha1.NodeSensor, renewed map[string]time.Time, now time.Time) {
	for name, ns := range sensors {
		ns.Status.HeartbeatTime = r.live.observeTime(name, heartbeat.Latest(ns.Status.HeartbeatTime, renewed[heartbeat.LeaseName(name)]), now)
	}
}

// profileOfLease maps an agent's Lease to the profile governing its node (through the node's
// NodeSensor in the cache). leaseRevived decides which Lease events matter.
func (r *SecurityProfileReconciler) profileOfLease(ctx context.Context, o client.Object) []reconcile.Request {
	ns := &v1alpha1.NodeSensor{}
	if err := r.Get(ctx, types.NamespacedName{Name: o.GetName()}, ns); err != nil || ns.Spec.Profile == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: ns.Spec.Profile}}}
}

// leaseRevived passes a Lease's creation or renewal when the manager had seen its node's
// heartbeat expire (it brings a node back from Unknown), and records the renewal as seen now.
// Renewals of a live Lease, and a fleet's first Leases, pass nothing: expiry is timed by the
// reconciler's RequeueAfter, and a fleet's renewals would otherwise wake a pass each.
func leaseRevived(timeout time.Duration, live *liveness, now func() time.Time) predicate.Predicate {
	revived := func(o client.Object) bool {
		l, ok := o.(*coordinationv1.Lease)
		if !ok {
			return true
		}
		t := now()
		seen, known := live.observed(l.Name)
		live.observe(l.Name, heartbeat.RenewTime(l), t)
		return known && t.Sub(seen) > timeout
	}
	return predicate.Funcs{
		CreateFunc: func(e event.CreateEvent) bool { return revived(e.Object) },
		UpdateFunc: func(e event.UpdateEvent) bool { return revived(e.ObjectNew) },
		DeleteFunc: func(event.DeleteEvent) bool { return false },
	}
}
