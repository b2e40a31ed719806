package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// slotLatency pairs each node's NodeSensor creation, its agent's last report before the
// condition, and the condition; nodes without all three, refused writes and writes outside the
// window do not count.
func TestSlotLatency(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	w := func(ms int, agent bool, res, name string, code int) auditWrite {
		return auditWrite{at: at(ms), done: at(ms + 5), agent: agent, resource: res, name: name, code: code}
	}
	a := auditCounts{writes: []auditWrite{
		w(-100, false, "nodesensors", "early", 201), // before the window
		w(0, false, "nodesensors", "a", 201),
		w(10, false, "nodesensors", "b", 201),
		w(20, false, "nodesensors", "c", 201), // never verified
		w(500, true, "nodesensors/status", "a", 200),
		w(700, true, "nodesensors/status", "a", 200), // the verdict after the facts
		w(800, true, "nodesensors/status", "b", 409), // refused: not a report
		w(900, true, "nodesensors/status", "b", 200),
		w(1000, false, "nodes/status", "a", 200),
		w(1100, false, "nodes/status", "early", 200),
		w(2900, false, "nodes/status", "b", 200),
		w(3000, false, "nodes/status", "a", 200), // a later condition write: counted once
	}}
	l := a.slotLatency(t0, at(5000))
	if l.nodes != 2 {
		t.Fatalf("%d nodes, want 2 (a and b)", l.nodes)
	}
	want := func(got []time.Duration, w ...time.Duration) {
		t.Helper()
		if len(got) != len(w) || got[0] != w[0] || got[1] != w[1] {
			t.Errorf("got %v, want %v", got, w)
		}
	}
	want(l.toReport, 700*time.Millisecond, 890*time.Millisecond)
	want(l.toVerify, 295*time.Millisecond, 1995*time.Millisecond)
	if q := quantile(l.toVerify, 0.9); q != 295*time.Millisecond {
		t.Errorf("p90 of two: %v, want the lower (index 0.9*(n-1) rounded down)", q)
	}
	if q := quantile(nil, 0.5); q != 0 {
		t.Errorf("quantile of none: %v", q)
	}
}

func TestSteadyLengthIsWholeHeartbeats(t *testing.T) {
	for _, c := range []struct{ want, hb, got time.Duration }{
		{90 * time.Second, 40 * time.Second, 80 * time.Second},
		{100 * time.Second, 40 * time.Second, 120 * time.Second},
		{10 * time.Second, 40 * time.Second, 40 * time.Second},
		{90 * time.Second, 0, 90 * time.Second},
	} {
		if got := steadyLength(c.want, c.hb); got != c.got {
			t.Errorf("steadyLength(%s, %s) = %s, want %s", c.want, c.hb, got, c.got)
		}
	}
}

// findCPUUsers finds the control plane among this process's children by name, and a snapshot
// reads their CPU time (a copy of sleep named etcd stands in for etcd).
func TestFindCPUUsers(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal("no sleep binary to stand in for etcd:", err)
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	etcd := filepath.Join(t.TempDir(), "etcd")
	if err := os.WriteFile(etcd, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(etcd, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	u := findCPUUsers(os.Getpid())
	if u.etcd != cmd.Process.Pid || u.apiserver != 0 {
		t.Fatalf("found %+v, want etcd %d and no API server", u, cmd.Process.Pid)
	}
	s := u.snap()
	if s.etcd < 0 || s.bench < 0 || s.manager < 0 || s.apiserver != -1 {
		t.Errorf("snapshot %+v: want the CPU time of etcd, this process and the 'manager' (this process), none for the API server", s)
	}
	if got := cores(cpuSnap{0, 0, 0, 0}, cpuSnap{2, 1, 0.5, -1}, 2); got != "API server 1.00, etcd 0.50, manager 0.25, this process (simulated agents, observer) ?" {
		t.Errorf("cores: %q", got)
	}
}
