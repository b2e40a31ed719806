package controllers

import (
	"testing"
	"time"
)

// Liveness is measured on the manager's clock: an agent whose clock runs ahead cannot keep its
// node alive after it stops, and a heartbeat already old at a manager restart stays old.
func TestLivenessOnTheManagersClock(t *testing.T) {
	const timeout = 40 * time.Second
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	var l liveness

	ahead := now.Add(10 * time.Minute) // the agent's clock is ten minutes fast
	if got := l.observe("fast", ahead, now); !got.Equal(now) {
		t.Errorf("first sight of a heartbeat from the future counts from %v, want now (%v)", got, now)
	}
	later := now.Add(timeout + time.Second)
	if got := l.observe("fast", ahead, later); later.Sub(got) <= timeout {
		t.Errorf("an unchanged heartbeat from a fast clock still looks alive after the timeout (seen %v at %v)", got, later)
	}
	if got := l.observe("fast", ahead.Add(time.Second), later); !got.Equal(later) {
		t.Errorf("a changed heartbeat counts from when it was seen: %v, want %v", got, later)
	}

	old := now.Add(-10 * time.Minute)
	if got := l.observe("dead", old, now); !got.Equal(old) {
		t.Errorf("a heartbeat already old at first sight (a manager restart) counts from itself: %v, want %v", got, old)
	}

	l.forget("fast")
	if _, ok := l.observed("fast"); ok {
		t.Error("a forgotten node is still tracked")
	}
	l.observe("gone", old, now)
	l.observe("other", now.Add(2*livenessForget), now.Add(2*livenessForget))
	if _, ok := l.observed("gone"); ok {
		t.Error("a node not seen for longer than livenessForget is kept forever")
	}
}
