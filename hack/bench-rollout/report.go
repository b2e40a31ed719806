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
	loadRollout      string  // load average at the end of the rollout (and -settle)
	cpu0, cpu1       cpuSnap // CPU seconds of the machine's users at the profiles' creation and at convergence
	raw              rawResult
	steady           *steadyWindow  // nil: not measured
	up               *upgradeResult // nil: no -upgrade
	commit           string
}

// resources lists the resources the brief asks for first, then any other one seen.
var resources = []string{"nodesensors", "nodesensors/status", "nodes/status", "nodes", "securityprofiles", "securityprofiles/status", "daemonsets", "events"}

func (r report) print(w io.Writer) {
	n := r.o.nodes
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("== bench-rollout ==")
	p("machine:          %s, %d cores, kernel %s, %s RAM (cores shared with other work; load avg before %s, after %s)", r.mach.cpu, r.mach.cores, r.mach.kernel, r.mach.memory, r.load0, r.load1)
	p("commit:           %s", r.commit)
	p("nodes:            %d in %d profile(s)", n, r.o.profiles)
	qps := "no client-side limit"
	if r.o.agentQPS > 0 {
		qps = fmt.Sprintf("client QPS %.0f/burst %d", r.o.agentQPS, r.o.agentBurst)
	}
	p("maxUnavailable:   %s  (self-test delay %s, agent heartbeat %s; simulated agents: %d writers, %s)", r.o.maxUnavailable, r.o.selfTestDelay, r.o.heartbeat, r.o.agentWorkers, qps)
	if r.converged {
		conv := r.tReady.Sub(r.t0)
		p("converged:        %.2fs from profile creation to %d/%d nodes RuntimeSecurityReady=True (Verified)", conv.Seconds(), n, n)
		if n == targetConvergeNodes && r.o.profiles == 1 {
			p("  target:         %d nodes in <= %s: %s", targetConvergeNodes, targetConverge, verdict(conv <= targetConverge))
		} else {
			p("  target:         (the %s target is for %d nodes in one profile)", targetConverge, targetConvergeNodes)
		}
	} else {
		p("converged:        NO — %d/%d nodes Verified after %.1fs (timeout %s)", r.prog.ready, n, r.tEnd.Sub(r.t0).Seconds(), r.o.timeout)
	}
	p("milestones:       first NodeSensor %s, first driver assigned %s, first node Verified %s; %d/%d NodeSensors, %d assigned",
		dur(r.prog.firstSensor), dur(r.prog.firstAssign), dur(r.prog.firstReady), r.prog.sensors, n, r.prog.assigned)
	p("pacing:           at most %d nodes verifying at once as the agents' informer saw it; highest spec.attempt %d; %d time(s) a Verified node left Verified",
		r.prog.maxInFlight, r.prog.maxAttempt, r.prog.left)
	if r.converged {
		l := r.audit.slotLatency(r.t0, r.tReady)
		p("slot latency:     NodeSensor created -> agent's verdict p50 %.2fs p90 %.2fs; verdict -> node condition p50 %.2fs p90 %.2fs (%d nodes, audit log)",
			quantile(l.toReport, 0.5).Seconds(), quantile(l.toReport, 0.9).Seconds(), quantile(l.toVerify, 0.5).Seconds(), quantile(l.toVerify, 0.9).Seconds(), l.nodes)
	}

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
	_, agentsToReady := a.window(r.t0, r.tReady).total()
	p("agent writes:     %d until convergence; %d in the whole run (audit; %d failed) — %d probes, %d verdicts, %d heartbeats, %d client errors in the whole run",
		agentsToReady, a.agentWrites, a.agentFailed, r.simStats.Probes, r.simStats.Verdicts, r.simStats.Beats, r.simStats.WriteErrors)
	p("manager memory:   peak RSS (VmHWM) %s (%.1f KiB per node); highest sampled VmRSS %s", mib(r.hwm), float64(r.hwm)/1024/float64(n), mib(r.peakRSS))
	if n == targetConvergeNodes {
		p("  target:         <= %.0f MiB at %d nodes: %s", targetRSSMiB, targetConvergeNodes, verdict(float64(r.hwm)/(1<<20) <= targetRSSMiB))
	}
	r.printRates(p)
	if r.converged && r.mgrCPU >= 0 {
		p("manager CPU:      %.1f s user+sys over its life (%.0f%% of one core over the rollout window incl. startup)", r.mgrCPU, 100*r.mgrCPU/window.Seconds())
	} else {
		p("manager CPU:      %.1f s user+sys over its life", r.mgrCPU)
	}
	if r.converged {
		p("cores busy:       %s, over the rollout (of %d)", cores(r.cpu0, r.cpu1, r.tReady.Sub(r.t0).Seconds()), r.mach.cores)
	}
	p("manager log:      %d client-side throttling lines, %d error lines, %d conflict mentions", r.mgrLog.throttling, r.mgrLog.errors, r.mgrLog.conflicts)
	for _, l := range r.mgrLog.throttlingLines {
		p("  throttling:     %s", l)
	}
	for _, l := range r.mgrLog.errorLines {
		p("  error:          %s", l)
	}
	if len(r.metrics) > 0 {
		p("manager metrics (non-zero, at convergence + settle):")
		for _, l := range r.metrics {
			p("  %s", l)
		}
	}
	r.printSteady(p)
	r.printUpgrade(p)
}

// rolloutRate is the manager's and agents' writes per second from the profiles' creation to
// convergence, and the raw rate's share of it (0 when either is unknown).
func (r report) rolloutRate() (writes int, perSecond, ratio float64) {
	if !r.converged {
		return 0, 0, 0
	}
	m, a := r.audit.window(r.t0, r.tReady).total()
	writes = m + a
	perSecond = rate(writes, r.tReady.Sub(r.t0))
	if raw := r.raw.best.rate(); raw > 0 {
		ratio = perSecond / raw
	}
	return writes, perSecond, ratio
}

func (r report) printRates(p func(string, ...any)) {
	if len(r.raw.levels) == 0 {
		p("raw write rate:   not measured (-raw-items 0)")
		return
	}
	var lv []string
	for _, l := range r.raw.levels {
		lv = append(lv, fmt.Sprintf("%d workers %.0f/s", l.workers, l.rate()))
	}
	p("raw write rate:   %.0f writes/s at best (%s): before the manager started, %d scratch nodes per level x %d writes "+
		"(NodeSensor create with a predicted driver, facts-and-verdict status patch, node condition patch), one unthrottled client",
		r.raw.best.rate(), strings.Join(lv, ", "), r.raw.items, rawWritesPerItem)
	writes, perSecond, ratio := r.rolloutRate()
	if !r.converged {
		return
	}
	p("rollout rate:     %.0f writes/s (%d manager and agent writes until convergence / %.2fs) = %.2f of the raw rate",
		perSecond, writes, r.tReady.Sub(r.t0).Seconds(), ratio)
	p("  target:         >= %.1f of the raw rate: %s", targetRawRatio, verdict(ratio >= targetRawRatio))
}

func (r report) printSteady(p func(string, ...any)) {
	if r.steady == nil {
		return
	}
	n := r.o.nodes
	f := r.steady.figures(r.audit, n)
	p("steady state:     %.0fs from %.1fs after convergence (once every agent had renewed its Lease once; agent heartbeat %s): %d agent and %d manager writes = %.2f writes and %.0f bytes per node per minute (%.0f without managed fields); %d refused writes not counted",
		f.minutes*60, r.steady.from.Sub(r.tReady).Seconds(), r.o.heartbeat, f.agentWrites, f.managerWrites, f.writesPerNodeMin, f.bytesPerNodeMin, f.bareBytesPerNodeMin, f.window.failed)
	// Every agent renews once per heartbeat period: fewer Lease writes mean the simulated agents
	// (or the API server) fell behind, and the figure understates the steady load.
	want := float64(n) * f.minutes * 60 / r.o.heartbeat.Seconds()
	onTime := float64(f.window.agents["leases"]) >= 0.9*want
	steadyVerdict := verdict(f.bytesPerNodeMin <= targetSteadyBytes)
	if !onTime {
		steadyVerdict = "UNRELIABLE (the agents fell behind on their heartbeats)"
	}
	p("  target:         <= %.0f bytes per node per minute: %s", targetSteadyBytes, steadyVerdict)
	p("  heartbeats:     %d Lease writes = %.0f%% of one per agent per %s%s", f.window.agents["leases"], 100*float64(f.window.agents["leases"])/want, r.o.heartbeat,
		map[bool]string{true: "", false: " — BEHIND: the agents could not renew on time, so this window understates the steady load"}[onTime])
	p("  bytes measure:  successful writes x the mean JSON size (managed fields included) of up to 20 objects of the resource read back at the window's end")
	for _, who := range []struct {
		name string
		m    map[string]int
	}{{"agents", f.window.agents}, {"manager", f.window.manager}} {
		keys := make([]string, 0, len(who.m))
		for k := range who.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, res := range keys {
			sz := r.steady.sizes[res]
			p("  %-8s        %-24s %7d writes  %6.3f per node per minute  x %5d bytes (%5d without managed fields) = %7.0f bytes per node per minute",
				who.name, res, who.m[res], float64(who.m[res])/float64(n)/f.minutes, sz.bytes, sz.bare, float64(who.m[res]*sz.bytes)/float64(n)/f.minutes)
		}
	}
	if len(f.unsized) > 0 {
		p("  unsized:        %s (no object read back: their bytes are not counted)", strings.Join(f.unsized, ", "))
	}
	if f.reconciles >= 0 && r.steady.reconciles0 >= 0 {
		p("  manager:        %.0f reconcile passes, %.2f s CPU (%.1f%% of one core) in the window", f.reconciles, f.cpu, 100*f.cpu/(f.minutes*60))
	}
	p("  nodes:          %d time(s) a node left Verified between convergence + settle and the window's end", r.steady.left)
}

func (r report) printUpgrade(p func(string, ...any)) {
	u := r.up
	if u == nil {
		return
	}
	n := r.o.nodes
	if u.to.IsZero() {
		p("upgrade:          NOT finished: %d/%d nodes verified again by %s; %d time(s) a node left Verified, for %s", u.proven, n, u.version, u.left, kv(u.leftWhy))
		return
	}
	d := u.to.Sub(u.from)
	p("upgrade:          every node verified again by agent %s %.2fs after the old manager's stop (new manager running after %.1fs); %d time(s) a node left Verified on the way",
		u.version, d.Seconds(), u.started.Seconds(), u.left)
	if u.left > 0 {
		p("  left Verified:  for %s (condition status/reason: count); first: %s", kv(u.leftWhy), strings.Join(u.leftAt, "; "))
	}
	if r.converged {
		first := r.tReady.Sub(r.t0)
		p("  target:         within %dx the first rollout's time (%.2fs: %.1fx) and no node leaves True: %s", targetUpgradeFactor,
			first.Seconds(), d.Seconds()/first.Seconds(), verdict(d <= targetUpgradeFactor*first && u.left == 0))
	}
	m, a := r.audit.window(u.from, u.to).total()
	p("  writes:         %d manager (%.2f per node) and %d agent writes; new manager peak RSS %s, %.1f s CPU", m, per(m, n), a, mib(u.hwm), u.cpu)
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
