package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

// selectNodes returns the nodes the profile governs (selected by it and by no older profile)
// and, for a conflict report, the nodes it selects that an older profile governs.
func (r *SecurityProfileReconciler) selectNodes(ctx context.Context, profile *v1alpha1.SecurityProfile) (map[string]*corev1.Node, map[string]string, error) {
	nodes := r.listNodes()
	var profiles v1alpha1.SecurityProfileList
	if err := r.List(ctx, &profiles); err != nil {
		return nil, nil, fmt.Errorf("list profiles: %w", err)
	}
	// heldBy is which profile governs each node, read only when a profile's selector does not
	// parse: every pass lists the nodes already, and a second fleet-sized list is not free.
	var heldBy map[string]string
	ordered := precedence(profiles.Items)
	selects := make([]func(*corev1.Node) bool, len(ordered))
	for i, p := range ordered {
		sel, err := nodeSelector(p)
		if err != nil {
			if heldBy == nil {
				var sensors v1alpha1.NodeSensorList
				if err := r.List(ctx, &sensors); err != nil {
					return nil, nil, fmt.Errorf("list node sensors: %w", err)
				}
				heldBy = make(map[string]string, len(sensors.Items))
				for _, ns := range sensors.Items {
					heldBy[ns.Name] = ns.Spec.Profile
				}
			}
			// That profile is InvalidSpec (its own reconcile says so). It keeps the nodes it
			// holds, so they are neither adopted nor released while its owner fixes it.
			name := p.Name
			selects[i] = func(n *corev1.Node) bool { return heldBy[n.Name] == name }
			continue
		}
		selects[i] = func(n *corev1.Node) bool { return sel.Matches(labels.Set(n.Labels)) }
	}
	// This profile's own selector, parsed once: a node another profile wins is lost to it only
	// when this one selects it too.
	own, ownErr := nodeSelector(profile)
	governed := map[string]*corev1.Node{}
	lost := map[string]string{}
	for _, n := range nodes {
		for j, p := range ordered {
			if !selects[j](n) {
				continue
			}
			if p.Name == profile.Name {
				governed[n.Name] = n
			} else if ownErr == nil && own.Matches(labels.Set(n.Labels)) {
				lost[n.Name] = p.Name
			}
			break
		}
	}
	return governed, lost, nil
}

// precedence orders live profiles by who wins a node both select: the oldest, then by name.
func precedence(items []v1alpha1.SecurityProfile) []*v1alpha1.SecurityProfile {
	out := make([]*v1alpha1.SecurityProfile, 0, len(items))
	for i := range items {
		if items[i].DeletionTimestamp.IsZero() {
			out = append(out, &items[i])
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		ti, tj := out[i].CreationTimestamp, out[j].CreationTimestamp
		if !ti.Equal(&tj) {
			return ti.Before(&tj)
		}
		return out[i].Name < out[j].Name
	})
	return out
}

func nodeSelector(p *v1alpha1.SecurityProfile) (labels.Selector, error) {
	if p.Spec.NodeSelector == nil {
		return labels.Everything(), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(p.Spec.NodeSelector)
	if err != nil {
		return nil, fmt.Errorf("profile %s: nodeSelector: %w", p.Name, err)
	}
	return sel, nil
}

// syncNodeSensors returns the profile's NodeSensors, the governed nodes that have none yet
// (sorted), and those whose NodeSensor an earlier pass created but the cache does not show yet
// (true: created with a driver). It adopts the NodeSensors another profile left behind, and
// deletes (releasing the node) those whose node left the selection.
func (r *SecurityProfileReconciler) syncNodeSensors(ctx context.Context, profile *v1alpha1.SecurityProfile, governed map[string]*corev1.Node) (sensors map[string]*v1alpha1.NodeSensor, missing []string, pending map[string]bool, err error) {
	// This profile's NodeSensors (by label), then those of governed nodes that another profile
	// left behind, one by one. Listed without a deep copy: a pass reads most of them and writes
	// few, and whatever writes one gives it data of its own first (ownCopy).
	var list v1alpha1.NodeSensorList
	if err := r.List(ctx, &list, client.MatchingLabels{ProfileLabel: profile.Name}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, nil, fmt.Errorf("list node sensors: %w", err)
	}
	listed := make(map[string]bool, len(list.Items))
	for i := range list.Items {
		listed[list.Items[i].Name] = true
		r.recent.seen(list.Items[i].Name)
	}
	for name := range governed {
		if listed[name] {
			continue
		}
		ns := &v1alpha1.NodeSensor{}
		err := r.Get(ctx, client.ObjectKey{Name: name}, ns)
		if err == nil {
			list.Items = append(list.Items, *ns)
		} else if !apierrors.IsNotFound(err) {
			return nil, nil, nil, fmt.Errorf("read node sensor %s: %w", name, err)
		}
	}
	sensors = map[string]*v1alpha1.NodeSensor{}
	var errs []error
	for i := range list.Items {
		ns := &list.Items[i]
		_, mine := governed[ns.Name]
		switch {
		case mine && ns.Spec.Profile != profile.Name:
			// The node changed hands (a profile was deleted or relabelled): start over under this one.
			if err := r.adopt(ctx, profile, ns); err != nil {
				errs = append(errs, err)
				r.nodeEvent(profile, ns, err)
				continue
			}
			sensors[ns.Name] = ns
		case mine:
			sensors[ns.Name] = ns
		case ns.Spec.Profile == profile.Name:
			if err := r.release(ctx, profile, ns); err != nil {
				errs = append(errs, err)
				r.nodeEvent(profile, ns, err)
			}
		}
	}
	now := time.Now()
	pending = map[string]bool{}
	for name := range governed {
		if sensors[name] != nil {
			continue
		}
		// (Created by an earlier pass, not in the cache yet: creating it again would only
		// conflict. advance counts it as what it was created as.)
		if created, assigned := r.recent.createPending(name, now); created {
			pending[name] = assigned
		} else {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	return sensors, missing, pending, errors.Join(errs...)
}

// createsPerPass bounds the NodeSensors one pass creates: a fleet's first nodes are probed and
// decided while its last NodeSensors are still being created, instead of after.
const createsPerPass = 500

// createNodeSensors creates the NodeSensors of governed nodes that have none, in name order, up
// to createsPerPass; more says some are left for the next pass. A pass creates last: the nodes
// it creates now have no probe to decide on yet, and the nodes that have one go first.
func (r *SecurityProfileReconciler) createNodeSensors(ctx context.Context, profile *v1alpha1.SecurityProfile, governed map[string]*corev1.Node, missing []string) (more bool, err error) {
	names := slices.Clone(missing)
	sort.Strings(names)
	if len(names) > createsPerPass {
		names, more = names[:createsPerPass], true
	}
	created := make([]*v1alpha1.NodeSensor, len(names))
	for i, name := range names {
		created[i] = newNodeSensor(profile, governed[name])
	}
	return more, forEach(ctx, created, func(ns *v1alpha1.NodeSensor) error {
		if err := r.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
			err = fmt.Errorf("create node sensor %s: %w", ns.Name, err)
			r.nodeEvent(profile, governed[ns.Name], err)
			return err
		}
		r.recent.created(ns.Name, time.Now(), false)
		return nil
	})
}

// release gives back a node that left the selection (or whose profile goes): condition and
// taint off, NodeSensor gone.
func (r *SecurityProfileReconciler) release(ctx context.Context, profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor) error {
	if err := r.releaseNode(ctx, ns.Name); err != nil {
		return err
	}
	uid := ns.UID
	if ours, err := r.deleteOwnNodeSensor(ctx, profile, ns); err != nil || !ours {
		return err
	}
	r.podSeen.forget(uid)
	r.live.forget(ns.Name)
	r.expect.forget(ns.Name)
	r.replaced.forget(ns.Name)
	r.recent.forget(ns.Name)
	r.verifying.forget(ns.Name)
	r.eventf(profile, nil, corev1.EventTypeNormal, "NodeReleased", "Release", "Node %s released: its condition, taint and NodeSensor are removed", ns.Name)
	return nil
}

// deleteOwnNodeSensor deletes the profile's NodeSensor only as read (its UID and resourceVersion
// as preconditions); after a conflict it reads it again and deletes it only while it is still
// this profile's. ours is false when another profile adopted it (or it was created anew).
func (r *SecurityProfileReconciler) deleteOwnNodeSensor(ctx context.Context, profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor) (ours bool, err error) {
	uid, first := ns.UID, true
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if !first {
			fresh := &v1alpha1.NodeSensor{}
			if err := r.reader().Get(ctx, client.ObjectKeyFromObject(ns), fresh); err != nil {
				return err
			}
			if fresh.UID != uid || fresh.Spec.Profile != profile.Name {
				return nil
			}
			ns = fresh
		}
		first = false
		rv := ns.ResourceVersion
		err := r.Delete(ctx, ns, client.Preconditions{UID: &uid, ResourceVersion: &rv})
		if err == nil {
			ours = true
		}
		return err
	})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("delete node sensor %s: %w", ns.Name, err)
	}
	return ours, nil
}

func newNodeSensor(profile *v1alpha1.SecurityProfile, node *corev1.Node) *v1alpha1.NodeSensor {
	ns := &v1alpha1.NodeSensor{
		ObjectMeta: metav1.ObjectMeta{
			Name:   node.Name,
			Labels: map[string]string{ProfileLabel: profile.Name},
			// The node owns its sensor: a garbage collector removes it with the node.
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
			}},
		},
		Spec: v1alpha1.NodeSensorSpec{Profile: profile.Name},
	}
	copySettings(profile, &ns.Spec)
	return ns
}

// ProfileLabel labels each NodeSensor with its profile, for `kubectl get nsensor -l`.
const ProfileLabel = "security.driverpilot.io/profile"

// copySettings copies what the agent needs from the profile into the NodeSensor.
func copySettings(profile *v1alpha1.SecurityProfile, spec *v1alpha1.NodeSensorSpec) {
	spec.Sensor = profile.Spec.Sensor
	spec.SelfTest = *profile.Spec.SelfTest.DeepCopy()
}

func (r *SecurityProfileReconciler) adopt(ctx context.Context, profile *v1alpha1.SecurityProfile, ns *v1alpha1.NodeSensor) error {
	ownCopy(ns)
	base := ns.DeepCopy()
	previous := ns.Spec.Profile
	ns.Spec = v1alpha1.NodeSensorSpec{Profile: profile.Name, Attempt: ns.Spec.Attempt}
	copySettings(profile, &ns.Spec)
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	ns.Labels[ProfileLabel] = profile.Name
	if err := r.Patch(ctx, ns, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("adopt node sensor %s: %w", ns.Name, err)
	}
	r.eventf(profile, nil, corev1.EventTypeNormal, "NodeAdopted", "Adopt", "Node %s now follows this profile (was %s)", ns.Name, previous)
	return nil
}

// conflictMessage names the nodes another profile governs.
func conflictMessage(lost map[string]string) string {
	byProfile := map[string][]string{}
	for node, p := range lost {
		byProfile[p] = append(byProfile[p], node)
	}
	var parts []string
	for p, nodes := range byProfile {
		sort.Strings(nodes)
		if len(nodes) > 5 {
			nodes = append(nodes[:5], fmt.Sprintf("and %d more", len(nodes)-5))
		}
		parts = append(parts, fmt.Sprintf("profile %s (older, so it wins) governs %s", p, strings.Join(nodes, ", ")))
	}
	sort.Strings(parts)
	return "Nodes selected by this profile are governed by another: " + strings.Join(parts, "; ")
}
