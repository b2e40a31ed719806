package controllers

import (
	"sync"
	"time"
)

// recentWrites remember this manager's writes that its cache may not show yet, so a pass that
// reads the cache right after them does not write the same thing again: a node condition (keyed
// by node, remembering the resourceVersion it was written over) and a NodeSensor creation
// (keyed by name, for a short while).
type recentWrites struct {
	mu         sync.Mutex
	conditions map[string]conditionWrite
	creates    map[string]createWrite
}

// createWrite is when a NodeSensor was created, and whether with a driver (it holds a rollout
// slot the cache does not show yet).
type createWrite struct {
	at       time.Time
	assigned bool
}

type conditionWrite struct{ overVersion, status, reason string }

// createGrace is how long a creation is trusted to reach the cache before it is tried again. An
// API server busy with a fleet's first writes can take seconds to show them; a creation tried
// again too early only costs it a refused write.
const createGrace = 30 * time.Second

// conditionWritten records that the node's condition was set to status/reason over the node at
// resourceVersion over.
func (w *recentWrites) conditionWritten(node, over, status, reason string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conditions == nil {
		w.conditions = map[string]conditionWrite{}
	}
	w.conditions[node] = conditionWrite{over, status, reason}
}

// conditionPending reports whether the cache still shows the node as it was before this manager
// wrote status/reason to it (resourceVersion unchanged).
func (w *recentWrites) conditionPending(node, version, status, reason string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	c, ok := w.conditions[node]
	return ok && c.overVersion == version && c.status == status && c.reason == reason
}

func (w *recentWrites) created(name string, now time.Time, assigned bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.creates == nil {
		w.creates = map[string]createWrite{}
	}
	w.creates[name] = createWrite{at: now, assigned: assigned}
}

// createPending reports whether name was created within createGrace and the cache has not
// shown it yet, and whether with a driver; seen says the cache shows it now, which ends the
// memory.
func (w *recentWrites) createPending(name string, now time.Time) (pending, assigned bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c, ok := w.creates[name]
	if ok && now.Sub(c.at) > createGrace {
		delete(w.creates, name)
		return false, false
	}
	return ok, c.assigned
}

func (w *recentWrites) seen(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.creates, name)
}

// forget drops what is remembered about a node (it left the profile).
func (w *recentWrites) forget(node string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.conditions, node)
	delete(w.creates, node)
}
