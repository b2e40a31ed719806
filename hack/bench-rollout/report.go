package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/driverpilot/driverpilot/internal/simagent"
)

type machine struct {
	cpu    string
	cores  int
	kernel string
	memory string
}

func readMachine() machine {
	m := machine{cpu: "unknown", cores: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	var u syscall.Utsname
	if err := syscall.Uname(&u); err == nil {
		m.kernel = cstr(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "MemTotal:") {
				m.memory = strings.Join(strings.Fields(l)[1:], " ")
			}
		}
	}
	return m
}

func cstr(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

type report struct {
	o                options
	mach             machine
	load0, load1     string
	t0, tReady, tEnd time.Time
	converged        bool
	prog             progressSnap
	audit            auditCounts
	hwm, peakRSS     int64
	mgrCPU           float64
	simStats         simagent.Stats
	metrics          []string
	mgrLog           logSummary
}

// resources lists the resources the brief asks for first, then any other one seen.
var resources = []string{"nodesensors", "nodesensors/status", "nodes/status", "nodes", "securityprofiles", "securityprofiles/status", "daemonsets", "events"}

func (r report) print(w io.Writer) {
	n := r.o.nodes
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("== bench-rollout ==")
	p("machine:          %s, %d cores, kernel %s, %s RAM (cores shared with other work; load avg before %s, after %s)", r.mach.cpu, r.mach.cores, r.mach.kernel, r.mach.memory, r.load0, r.load1)
	p("nodes:            %d", n)
	p("maxUnavailable:   %s  (self-test delay %s, agent heartbeat %s, agent client QPS %.0f/burst %d)", r.o.maxUnavailable, r.o.selfTestDelay, r.o.heartbeat, r.o.agentQPS, r.o.agentBurst)
	if r.converged {
		conv := r.tReady.Sub(r.t0)
		p("converged:        %.2fs from profile creation to %d/%d nodes RuntimeSecurityReady=True (Verified)", conv.Seconds(), n, n)
		if n >= targetConvergeNodes {
			p("  target:         %d nodes in < %s: %s", targetConvergeNodes, targetConverge, verdict(conv < targetConverge))
		} else {
			p("  target:         (the %s target is for %d nodes)", targetConverge, targetConvergeNodes)
		}
	} else {
		p("converged:        NO — %d/%d nodes Verified after %.1fs (timeout %s)", r.prog.ready, n, r.tEnd.Sub(r.t0).Seconds(), r.o.timeout)
	}
	p("milestones:       first NodeSensor %s, first driver assigned %s, first node Verified %s; %d/%d NodeSensors, %d assigned",
		dur(r.prog.firstSensor), dur(r.prog.firstAssign), dur(r.prog.firstReady), r.prog.sensors, n, r.prog.assigned)
	p("pacing:           at most %d nodes verifying at once as the agents' informer saw it; highest spec.attempt %d", r.prog.maxInFlight, r.prog.maxAttempt)

	a := r.audit
	window := r.tEnd.Sub(r.t0)
	p("manager writes:   %d in the window (profile creation + %.1fs) = %.2f per node; %d until convergence = %.2f per node; %d before the profile existed",
		a.total, window.Seconds(), per(a.total, n), a.toReady, per(a.toReady, n), a.beforeT0)
	p("  target:         <= %.0f per node: %s", targetWritesPerNode, verdict(per(a.total, n) <= targetWritesPerNode))
	p("  by resource:    %-26s %8s %9s %12s   %s", "resource", "writes", "per node", "to converge", "verb HTTP-code: count")
	seen := map[string]bool{}
	for _, res := range resources {
		seen[res] = true
		p("                  %-26s %8d %9.2f %12d   %s", res, a.byResource[res], per(a.byResource[res], n), a.byResourceToReady[res], kv(a.byResVerb[res]))
	}
	var others []string
	for res := range a.byResource {
		if !seen[res] {
			others = append(others, res)
		}
	}
	sort.Strings(others)
	for _, res := range others {
		p("                  %-26s %8d %9.2f %12d   %s", res, a.byResource[res], per(a.byResource[res], n), a.byResourceToReady[res], kv(a.byResVerb[res]))
	}
	p("  by verb:        %s", kv(a.byVerb))
	if len(a.failed) > 0 {
		failed := map[string]int{}
		for c, k := range a.failed {
			failed[fmt.Sprint(c)] = k
		}
		p("  failed writes:  %s (HTTP code: count)", kv(failed))
	}
	p("  peak rate:      %d manager writes in one second; mean %.1f/s until convergence", a.peakPerSecond, rate(a.toReady, r.tReady.Sub(r.t0)))
	p("agent writes:     %d (audit; %d failed) — %d probes, %d verdicts, %d heartbeats, %d client errors",
		a.agentWrites, a.agentFailed, r.simStats.Probes, r.simStats.Verdicts, r.simStats.Beats, r.simStats.WriteErrors)
	p("manager memory:   peak RSS (VmHWM) %s; highest sampled VmRSS %s", mib(r.hwm), mib(r.peakRSS))
	if r.converged && r.mgrCPU >= 0 {
		p("manager CPU:      %.1f s user+sys over its life (%.0f%% of one core over the rollout window incl. startup)", r.mgrCPU, 100*r.mgrCPU/window.Seconds())
	} else {
		p("manager CPU:      %.1f s user+sys over its life", r.mgrCPU)
	}
	p("manager log:      %d client-side throttling lines, %d error lines, %d conflict mentions", r.mgrLog.throttling, r.mgrLog.errors, r.mgrLog.conflicts)
	for _, l := range r.mgrLog.throttlingLines {
		p("  throttling:     %s", l)
	}
	for _, l := range r.mgrLog.errorLines {
		p("  error:          %s", l)
	}
	if len(r.metrics) > 0 {
		p("manager metrics (non-zero, at the end):")
		for _, l := range r.metrics {
			p("  %s", l)
		}
	}
}

func verdict(ok bool) string {
	if ok {
		return "MET"
	}
	return "MISSED"
}

func per(k, n int) float64 { return float64(k) / float64(n) }

func rate(k int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(k) / d.Seconds()
}

func dur(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmt.Sprintf("+%.2fs", d.Seconds())
}

func kv(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
