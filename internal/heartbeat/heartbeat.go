// Package heartbeat is how a node agent says it is alive: a small Lease per node, renewed every
// interval, like the kubelet's node Lease. A heartbeat written into the NodeSensor status would
// rewrite that whole object (probe facts, self-test, managed fields) twice a minute on every node
// and wake every watcher of NodeSensors; a Lease renewal is a few hundred bytes that only the
// manager's Lease cache sees.
package heartbeat

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// LeaseName is the name of a node's agent Lease: the node's name, as the kubelet names its own
// Lease in kube-node-lease. The admission policy lets an agent write only the Lease of the node
// its token was issued on.
func LeaseName(node string) string { return node }

// Renew renews the node's Lease at now, creating it on the first renewal. holder names the
// agent (its pod, or the node outside a pod), as `kubectl get lease` shows. Steady state is one
// small merge patch. The Lease carries nothing else (no labels, no duration): every byte of it
// is written on every renewal of every node.
func Renew(ctx context.Context, c client.Client, namespace, node, holder string, now time.Time) error {
	renew := metav1.NewMicroTime(now)
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: LeaseName(node)}}
	patch := fmt.Sprintf(`{"spec":{"holderIdentity":%q,"renewTime":%q}}`, holder, renew.UTC().Format(metav1.RFC3339Micro))
	err := c.Patch(ctx, lease, client.RawPatch(types.MergePatchType, []byte(patch)))
	if !apierrors.IsNotFound(err) {
		return err
	}
	lease = &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: LeaseName(node)},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder), RenewTime: &renew},
	}
	if err := c.Create(ctx, lease); err != nil {
		return fmt.Errorf("create heartbeat lease %s/%s: %w", namespace, lease.Name, err)
	}
	return nil
}

// RenewTime is when the Lease was last renewed, zero when never.
func RenewTime(l *coordinationv1.Lease) time.Time {
	if l.Spec.RenewTime == nil {
		return time.Time{}
	}
	return l.Spec.RenewTime.Time
}

// Latest returns the newer of a heartbeat the agent wrote with a status report and its Lease's
// renewal: an agent reports both ways (every status report carries a heartbeat time; an agent
// older than the Lease heartbeat, or one whose Lease write is refused, has only that).
func Latest(status *metav1.Time, renewed time.Time) *metav1.Time {
	if renewed.IsZero() || (status != nil && !status.Time.Before(renewed)) {
		return status
	}
	return &metav1.Time{Time: renewed}
}
