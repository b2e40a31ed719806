package controllers

import (
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// liveness measures each node's agent heartbeat on the manager's clock, as the node lifecycle
// controller does for kubelets: what counts is when the manager saw the agent's heartbeat
// (Lease renewal or status report) change, never the time the agent wrote. An agent whose clock
// runs ahead therefore cannot keep its node alive after it dies.
type liveness struct {
	mu    sync.Mutex
	nodes map[string]sighting
	swept time.Time
}

// sighting is the agent's last heartbeat value and when the manager first saw it.
type sighting struct {
	value    time.Time
	observed time.Time
}

// livenessForget is how long a node's sighting is kept after it was last looked at (a deleted
// node or NodeSensor is forgotten after that).
const livenessForget = time.Hour

// observe records the agent's heartbeat value for a node and returns when the manager saw it
// change last. A value seen for the first time (a manager start) counts from the earlier of now
// and the value itself: a heartbeat that was already old is not made young by a restart, and one
// from a clock ahead counts from now.
func (l *liveness) observe(node string, value time.Time, now time.Time) time.Time {
	if value.IsZero() {
		return value
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.nodes == nil {
		l.nodes = map[string]sighting{}
	}
	s, ok := l.nodes[node]
	switch {
	case !ok:
		s = sighting{value: value, observed: value}
		if now.Before(value) {
			s.observed = now
		}
	case !s.value.Equal(value):
		s = sighting{value: value, observed: now}
	}
	l.nodes[node] = s
	if now.Sub(l.swept) > livenessForget/4 {
		l.sweep(now)
	}
	return s.observed
}

// observed returns when the manager last saw the node's heartbeat change, or false.
func (l *liveness) observed(node string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.nodes[node]
	return s.observed, ok
}

func (l *liveness) forget(node string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.nodes, node)
}

func (l *liveness) sweep(now time.Time) {
	l.swept = now
	for name, s := range l.nodes {
		if now.Sub(s.observed) > livenessForget && now.Sub(s.value) > livenessForget {
			delete(l.nodes, name)
		}
	}
}

// observeTime is observe for an optional API time.
func (l *liveness) observeTime(node string, value *metav1.Time, now time.Time) *metav1.Time {
	if value == nil {
		return nil
	}
	t := l.observe(node, value.Time, now)
	return &metav1.Time{Time: t}
}
