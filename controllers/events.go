package controllers

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/rollout"
)

// maxNoteBytes is the events API's limit on an event's note; a longer note is refused.
const maxNoteBytes = 1024

// eventf records an event whose note is cut to what the events API accepts.
func (r *SecurityProfileReconciler) eventf(regarding, related runtime.Object, eventtype, reason, action, format string, args ...any) {
	r.Recorder.Eventf(regarding, related, eventtype, reason, action, "%s", truncateBytes(fmt.Sprintf(format, args...), maxNoteBytes))
}

// truncateBytes shortens s to at most n bytes, ending with "..." when cut, on a rune boundary.
func truncateBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// eventBatch gathers one pass's routine per-node events (a driver selected, a node verified) into
// one event per reason and kind: at fleet scale one event per node would be thousands of writes per
// rollout for what the NodeSensors already say node by node.
type eventBatch struct {
	mu    sync.Mutex
	nodes map[batchKey][]string
}

type batchKey struct{ reason, action, what string }

type eventBatchKey struct{}

// withEventBatch returns a context whose routine events are gathered until flushEvents.
func withEventBatch(ctx context.Context) (context.Context, *eventBatch) {
	b := &eventBatch{nodes: map[batchKey][]string{}}
	return context.WithValue(ctx, eventBatchKey{}, b), b
}

// batchedEvent records a routine Normal event about a node on the profile: gathered when ctx carries
// a batch, at once otherwise. what says what happened ("driver modern_ebpf selected").
func (r *SecurityProfileReconciler) batchedEvent(ctx context.Context, profile *v1alpha1.SecurityProfile, reason, action, what, node string) {
	b, ok := ctx.Value(eventBatchKey{}).(*eventBatch)
	if !ok {
		r.eventf(profile, nil, corev1.EventTypeNormal, reason, action, "Node %s: %s", node, what)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	k := batchKey{reason, action, what}
	b.nodes[k] = append(b.nodes[k], node)
}

// flushEvents records the gathered events: one per reason and kind, naming the first nodes.
func (r *SecurityProfileReconciler) flushEvents(b *eventBatch, profile *v1alpha1.SecurityProfile) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keys := make([]batchKey, 0, len(b.nodes))
	for k := range b.nodes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].reason+keys[i].what < keys[j].reason+keys[j].what })
	for _, k := range keys {
		nodes := b.nodes[k]
		sort.Strings(nodes)
		if len(nodes) == 1 {
			r.eventf(profile, nil, corev1.EventTypeNormal, k.reason, k.action, "Node %s: %s", nodes[0], k.what)
			continue
		}
		r.eventf(profile, nil, corev1.EventTypeNormal, k.reason, k.action, "%d nodes: %s: %s", len(nodes), k.what, rollout.Names(nodes, 10))
	}
	b.nodes = map[batchKey][]string{}
}
