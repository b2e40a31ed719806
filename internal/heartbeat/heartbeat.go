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

// Renewer renews one node's Lease. It remembers that the Lease exists, so a renewal is one small
// merge patch; its first renewal reads the Lease (a read, not a write) and creates it when it is
// not there, and a Lease deleted meanwhile is created again. holder names the agent (its pod, or
// the node outside a pod), as `kubectl get lease` shows. The Lease carries nothing else (no
// labels, no duration): every byte of it is written on every renewal of every node.
type Renewer struct {
	Client                  client.Client
	Namespace, Node, Holder string

	exists bool
}

// Renew renews the Lease at now.
func (r *Renewer) Renew(ctx context.Context, now time.Time) error {
	key := client.ObjectKey{Namespace: r.Namespace, Name: LeaseName(r.Node)}
	if !r.exists {
		err := r.Client.Get(ctx, key, &coordinationv1.Lease{})
		if apierrors.IsNotFound(err) {
			return r.create(ctx, now)
		}
		if err != nil {
			return fmt.Errorf("read heartbeat lease %s: %w", key, err)
		}
		r.exists = true
	}
	renew := metav1.NewMicroTime(now)
	patch := fmt.Sprintf(`{"spec":{"holderIdentity":%q,"renewTime":%q}}`, r.Holder, renew.UTC().Format(metav1.RFC3339Micro))
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	err := r.Client.Patch(ctx, lease, client.RawPatch(types.MergePatchType, []byte(patch)))
	if apierrors.IsNotFound(err) {
		return r.create(ctx, now)
	}
	return err
}

func (r *Renewer) create(ctx context.Context, now time.Time) error {
	renew := metav1.NewMicroTime(now)
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: r.Namespace, Name: LeaseName(r.Node)},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(r.Holder), RenewTime: &renew},
	}
	if err := r.Client.Create(ctx, lease); err != nil {
		return fmt.Errorf("create heartbeat lease %s/%s: %w", r.Namespace, lease.Name, err)
	}
	r.exists = true
	return nil
}

// Renew renews a node's Lease once, as a Renewer's first renewal does.
func Renew(ctx context.Context, c client.Client, namespace, node, holder string, now time.Time) error {
	r := &Renewer{Client: c, Namespace: namespace, Node: node, Holder: holder}
	return r.Renew(ctx, now)
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
