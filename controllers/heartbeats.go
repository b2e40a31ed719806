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

// withLeaseHeartbeats sets each NodeSensor's heartbeat to the newer of its status heartbeat (set
// by every report of the agent) and its Lease's renewal, in the manager's copy only: from here on
// a heartbeat is a heartbeat, wherever the agent wrote it. (A NodeSensor listed without a copy
// is a shallow copy of the cache's: replacing its status's heartbeat pointer leaves the cache be.)
func withLeaseHeartbeats(sensors map[string]*v1alpha1.NodeSensor, renewed map[string]time.Time) {
	for name, ns := range sensors {
		ns.Status.HeartbeatTime = heartbeat.Latest(ns.Status.HeartbeatTime, renewed[heartbeat.LeaseName(name)])
	}
}

// profileOfLease maps an agent's Lease to the profile governing its node (through the node's
// NodeSensor in the cache), when the Lease can change what the manager makes of the node: not
// while the agent's last status report is itself a live heartbeat (a fleet's first renewals,
// which create the Leases, would each wake a pass for nothing).
func (r *SecurityProfileReconciler) profileOfLease(ctx context.Context, o client.Object) []reconcile.Request {
	ns := &v1alpha1.NodeSensor{}
	if err := r.Get(ctx, types.NamespacedName{Name: o.GetName()}, ns); err != nil || ns.Spec.Profile == "" {
		return nil
	}
	if hb := ns.Status.HeartbeatTime; hb != nil && time.Since(hb.Time) <= r.HeartbeatTimeout {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: ns.Spec.Profile}}}
}

// leaseRevived passes a Lease's creation and a renewal after the Lease had expired (it brings a
// node back from Unknown). Renewals of a live Lease pass nothing: expiry is timed by the
// reconciler's RequeueAfter, and a fleet's renewals would otherwise wake a pass each.
func leaseRevived(timeout time.Duration) predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, okO := e.ObjectOld.(*coordinationv1.Lease)
			n, okN := e.ObjectNew.(*coordinationv1.Lease)
			if !okO || !okN {
				return true
			}
			return time.Since(heartbeat.RenewTime(o)) > timeout && time.Since(heartbeat.RenewTime(n)) <= timeout
		},
		DeleteFunc: func(event.DeleteEvent) bool { return false },
	}
}
