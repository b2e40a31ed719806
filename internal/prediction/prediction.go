// Package prediction lets nodes that look alike to the kubelet start with the driver the first
// of them proved, before their own probe. A node's NodeSensor is then created with its driver
// decided, and its agent reports facts and verdict in one write: three writes per node instead
// of five, which at fleet scale is most of the API server's work. The manager still checks each
// node's own facts before it counts the proof. It decides only; it does no I/O.
package prediction

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

// Key is what makes nodes alike before their probe: the kernel, OS image and architecture the
// kubelet reports, and the cloud provider of the node's providerID.
type Key string

// KeyOf returns the node's key, empty when the kubelet reported no kernel (such a node is never
// predicted).
func KeyOf(n *corev1.Node) Key {
	info := n.Status.NodeInfo
	if info.KernelVersion == "" {
		return ""
	}
	provider, _, _ := strings.Cut(n.Spec.ProviderID, "://")
	return Key(strings.Join([]string{info.KernelVersion, info.OSImage, info.Architecture, provider}, "|"))
}

// Known is a node of the profile that has its NodeSensor.
type Known struct {
	Name string
	Key  Key
	// Driver is its current driver.
	Driver v1alpha1.Driver
	// Proven says that driver passed a self-test under the profile's current spec and agent,
	// and this node's own facts chose it.
	Proven bool
	// FirstChoice says no driver failed on this node before (its proof is its facts' first
	// choice, not a fallback).
	FirstChoice bool
	// Failed lists the drivers that failed a self-test on this node.
	Failed []v1alpha1.Driver
	// Mispredicted says this node's own facts chose another driver than the one predicted for
	// it: its kind is not as alike as its kubelets say.
	Mispredicted bool
	// Decided says Driver is this node's own facts' choice (not a prediction), proven or not.
	Decided bool
	// Busy says the node has not settled yet: it waits for its probe, for a rollout slot or
	// for its verdict, and still holds its kind back.
	Busy bool
}

// Missing is a governed node without a NodeSensor.
type Missing struct {
	Name string
	Key  Key
}

// Sample is a prediction: the driver, and the node that proved it.
type Sample struct {
	Driver v1alpha1.Driver
	From   string
}

// Plan says what becomes of each missing node.
type Plan struct {
	// Predicted are the nodes whose kind agrees on a proven driver: created with it when the
	// rollout gives them a slot.
	Predicted map[string]Sample
	// Create are the nodes created now without a driver, to be probed and decided alone: the
	// first node of a kind nobody has tried; every node without a key; and, once no node of
	// their kind is busy, every node of a kind that predicts nothing.
	Create []string
	// Deferred are the nodes that wait, uncreated, for the first node of their kind to settle.
	Deferred []string
}

// Decide plans the missing nodes (in the given order) from the known ones. A kind predicts a
// driver when every proven node of it proved that driver, at least one as its first choice, no
// node of it saw that driver fail or chose another first, and none was mispredicted.
func Decide(known []Known, missing []Missing) Plan {
	type kind struct {
		driver         v1alpha1.Driver
		from           string
		disagree, busy bool
	}
	kinds := map[Key]*kind{}
	for _, n := range known {
		if n.Key == "" {
			continue
		}
		k := kinds[n.Key]
		if k == nil {
			k = &kind{}
			kinds[n.Key] = k
		}
		k.busy = k.busy || n.Busy
		k.disagree = k.disagree || n.Mispredicted
		if n.Proven {
			switch {
			case k.driver == "":
				k.driver = n.Driver
			case k.driver != n.Driver:
				k.disagree = true
			}
			if n.FirstChoice && (k.from == "" || n.Name < k.from) {
				k.from = n.Name
			}
		}
	}
	for _, n := range known {
		k := kinds[n.Key]
		if k == nil || k.driver == "" {
			continue
		}
		// A node that saw the driver fail, or whose own first choice is another (proven yet or
		// not), says the kind is not alike.
		if slices.Contains(n.Failed, k.driver) || (n.Decided && n.FirstChoice && n.Driver != "" && n.Driver != k.driver) {
			k.disagree = true
		}
	}
	p := Plan{Predicted: map[string]Sample{}}
	for _, m := range missing {
		k := kinds[m.Key]
		switch {
		case m.Key == "":
			p.Create = append(p.Create, m.Name)
		case k != nil && k.driver != "" && k.from != "" && !k.disagree:
			p.Predicted[m.Name] = Sample{Driver: k.driver, From: k.from}
		case k != nil && k.busy:
			p.Deferred = append(p.Deferred, m.Name)
		case k == nil:
			// The first of its kind: probed alone while the rest of its kind waits.
			p.Create = append(p.Create, m.Name)
			kinds[m.Key] = &kind{busy: true}
		default:
			p.Create = append(p.Create, m.Name)
		}
	}
	return p
}
