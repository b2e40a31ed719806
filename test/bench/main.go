// Command bench measures what DriverPilot's built-in exec sensor (agent/sensor) costs, for each
// driver. It is a benchmark, not a test: it prints figures and fails only when it cannot measure.
//
//  1. Cost per exec, for execs of an ordinary file (the program filters them out and sends
//     nothing), from an overlay lower layer (the program decides the layer and, with no self-test
//     asking, sends nothing: nearly every exec on a Kubernetes node is one) and from an overlay
//     upper layer (it sends an event, without waking the reader per event):
//     - in the kernel: the kernel's BPF run-time statistics (run time / run count) of every BPF
//     program the sensor loaded;
//     - in user space: the CPU time of the sensor's reader thread (waiting, reading, decoding and
//     handing events on), per exec and, beyond what the reader costs with no events (it wakes
//     every flush interval), per event;
//     - end to end, for an upper-layer exec event: the two added.
//     The execs run from a helper process in a container's cgroup (named the way the kubelet and
//     containerd name them), as a node's do.
//  2. Exec throughput: blocks of fork+exec of a tiny static executable with no sensor and with
//     each driver's, back to back in a rotating order, round after round; ratios per round against
//     the no-sensor block, wall-clock and per CPU second.
//
// Run it as root: go run ./test/bench (or make bench-sensor).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// programNames are the sensor's kernel programs (bpf/exec.bpf.c), one per driver.
var programNames = map[v1alpha1.Driver]string{
	v1alpha1.DriverModernEBPF: "dp_exec_tp_btf",
	v1alpha1.DriverEBPF:       "dp_exec_raw_tp",
}

type config struct {
	drivers     []v1alpha1.Driver
	costExecs   int
	costRounds  int
	tputExecs   int
	tputRounds  int
	workdir     string
	targetNanos float64
	targetUpper float64
	useSysctl   bool
	pin         int
	driver      v1alpha1.Driver // the one measureCost measures
}

func main() {
	if len(os.Args) == 6 && os.Args[1] == execLoopArg {
		os.Exit(execLoopMain(os.Args[2], os.Args[3], os.Args[4], os.Args[5]))
	}
	var cfg config
	drivers := flag.String("drivers", "modern_ebpf,ebpf", "drivers to measure, comma-separated")
	flag.IntVar(&cfg.costExecs, "n", 2000, "execs per exec kind and round for the in-kernel cost")
	flag.IntVar(&cfg.costRounds, "rounds", 5, "rounds of the in-kernel cost measurement")
	flag.IntVar(&cfg.tputExecs, "tn", 500, "execs per block (one exec kind, one configuration) of the throughput, at least 50")
	flag.IntVar(&cfg.tputRounds, "trounds", 31, "rounds of the throughput measurement (an odd number has a true median)")
	flag.StringVar(&cfg.workdir, "workdir", "/var/tmp", "directory on an ordinary (not overlay) filesystem for the staged executables")
	flag.Float64Var(&cfg.targetNanos, "target-ns", 500, "per-exec budget for ordinary and overlay lower-layer execs, shown beside the figure")
	flag.Float64Var(&cfg.targetUpper, "target-upper-ns", 2000, "per-exec budget for overlay upper-layer execs (they send an event)")
	flag.IntVar(&cfg.pin, "cpu", runtime.NumCPU()-1, "CPU the throughput's exec loop runs on, at nice -20 (-1: anywhere, nice 0)")
	flag.BoolVar(&cfg.useSysctl, "sysctl", false, "turn BPF statistics on with kernel.bpf_stats_enabled=1 (restored afterwards) instead of BPF_ENABLE_STATS")
	flag.Parse()
	for _, d := range strings.Split(*drivers, ",") {
		if _, ok := programNames[v1alpha1.Driver(d)]; !ok {
			fmt.Fprintf(os.Stderr, "bench: unknown driver %q\n", d)
			os.Exit(2)
		}
		cfg.drivers = append(cfg.drivers, v1alpha1.Driver(d))
	}
	if cfg.costExecs <= 0 || cfg.costRounds < 0 || cfg.tputExecs <= 0 || cfg.tputRounds < 0 {
		fmt.Fprintln(os.Stderr, "bench: -n and -tn must be positive, -rounds and -trounds not negative (0 skips that part)")
		os.Exit(2)
	}
	if cfg.tputRounds > 0 && cfg.tputExecs < subBlock {
		// The best stretch is taken over subBlock consecutive execs of a block.
		fmt.Fprintf(os.Stderr, "bench: -tn must be at least %d (the best stretch's length)\n", subBlock)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func progress(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...) }

func run(ctx context.Context, cfg config) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the benchmark loads BPF programs and mounts an overlay")
	}
	st, err := newStage(cfg.workdir)
	if err != nil {
		return fmt.Errorf("stage executables: %w", err)
	}
	defer func() { err = errors.Join(err, st.close()) }()

	m := machine()
	load := loadavg()
	var (
		costs []costRow
		how   string
	)
	if cfg.costRounds > 0 {
		progress("measuring in-kernel cost: %d rounds x %d execs per exec kind and driver", cfg.costRounds, cfg.costExecs)
		if costs, how, err = measureCosts(ctx, cfg, st); err != nil {
			return err
		}
	}
	var (
		tput       [][]*tputResult
		othersBusy float64
	)
	if cfg.tputRounds > 0 {
		progress("measuring exec throughput: %d rounds x %d execs per configuration", cfg.tputRounds, cfg.tputExecs)
		busy0, self0, wall0 := machineBusy(), ownCPU(), time.Now()
		if tput, err = measureThroughput(ctx, cfg, st); err != nil {
			return err
		}
		wall := time.Since(wall0).Seconds()
		othersBusy = max(0, ((machineBusy()-busy0)-(ownCPU()-self0)).Seconds()/wall)
	}

	fmt.Printf("machine: %s, %d CPUs, kernel %s, load average %s at start, %s at the end (shared machine)\n",
		m.cpu, runtime.NumCPU(), m.kernel, load, loadavg())
	fmt.Printf("executable: %d-byte static ELF that calls exit(0); ordinary execs from %s\n", mustLen(tinyExe()), st.plainFS)
	fmt.Printf("execs run in cgroup %s (a container's, as the kubelet's systemd driver names them)\n", st.cgroup)
	if cfg.costRounds > 0 {
		fmt.Printf("BPF statistics: %s\n\n", how)
		printCosts(cfg, costs)
	}
	if cfg.tputRounds > 0 {
		fmt.Println()
		printThroughput(cfg, tput)
		fmt.Printf("(while it ran, other processes kept %.2f of %d CPUs busy on average; hypervisor steal since boot %.1f%%)\n",
			othersBusy, runtime.NumCPU(), stealFraction()*100)
	}
	return nil
}

// exec kinds of the cost measurement.
type kind struct {
	name string
	path func(*stage) string
	exe  string
	// overlay kinds take other processes' runs out at the ordinary-file rate.
	overlay bool
	// upper kinds have the upper-layer budget.
	upper bool
}

var kinds = []kind{
	{"ordinary file", func(s *stage) string { return s.plain }, plainName, false, false},
	{"overlay lower", func(s *stage) string { return s.lower }, lowerName, true, false},
	{"overlay upper", func(s *stage) string { return s.upper }, upperName, true, true},
}

type costRow struct {
	driver v1alpha1.Driver
	kind   kind
	execs  uint64
	// others counts program runs for execs that were not ours (other processes on the machine).
	others uint64
	events uint64
	// nanos is the in-kernel cost per exec of this kind; for overlay kinds the other processes'
	// runs are taken out at the ordinary-file rate. readerNanos is the reader thread's CPU time
	// per exec in the same windows (up to the last event's arrival for upper kinds), idlePerSec
	// its CPU time per second without events (the round's windows of kinds that send none),
	// eventNanos its CPU time per event beyond that, e2eNanos nanos + eventNanos. Each is the
	// median over rounds of the per-round figure (rounds).
	nanos, readerNanos, idlePerSec, eventNanos, e2eNanos float64
	rounds                                               struct{ kernel, reader, idle, event, e2e []float64 }
	// programs is how many BPF programs the sensor loaded (their run times are summed).
	programs int
}

// startedSensor is a running built-in sensor with a subscriber that counts events per exe name,
// as the agent would consume them.
type startedSensor struct {
	s      *sensor.Builtin
	unsub  func()
	done   chan struct{}
	mu     sync.Mutex
	counts map[string]uint64
}

func startSensor(d v1alpha1.Driver) (*startedSensor, error) {
	s := sensor.NewBuiltin(sensor.Options{SubscriberBuffer: 1 << 16})
	if err := s.Start(d); err != nil {
		if tail := sensor.VerifierLogTail(err, 20); tail != "" {
			err = fmt.Errorf("%w\nverifier log (end):\n%s", err, tail)
		}
		s.Close()
		return nil, fmt.Errorf("start sensor: %w", err)
	}
	events, unsub := s.Subscribe()
	ss := &startedSensor{s: s, unsub: unsub, done: make(chan struct{}), counts: map[string]uint64{}}
	go func() {
		defer close(ss.done)
		for ev := range events {
			ss.mu.Lock()
			ss.counts[ev.Filename]++
			ss.mu.Unlock()
		}
	}()
	return ss, nil
}

func (ss *startedSensor) count(name string) uint64 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.counts[name]
}

// waitFor waits until the subscriber has seen want events of exe name.
func (ss *startedSensor) waitFor(name string, want uint64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for ss.count(name) < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d events for %s arrived within %s", ss.count(name), want, name, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

func (ss *startedSensor) close() error {
	ss.unsub()
	<-ss.done
	return ss.s.Close()
}

// measureCosts runs the cost measurement for every driver with the kernel's BPF statistics on, and
// turns them off again before the throughput runs (the accounting itself costs time per run).
func measureCosts(ctx context.Context, cfg config, st *stage) (rows []costRow, how string, err error) {
	restore, how, err := statsOn(cfg.useSysctl)
	if err != nil {
		return nil, "", err
	}
	defer func() { err = errors.Join(err, restore()) }()
	for _, d := range cfg.drivers {
		c := cfg
		c.driver = d
		r, err := measureCost(ctx, c, st)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", d, err)
		}
		rows = append(rows, r...)
	}
	return rows, how, nil
}

func measureCost(ctx context.Context, cfg config, st *stage) (rows []costRow, err error) {
	d := cfg.driver
	ss, err := startSensor(d)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, ss.close()) }()
	progs, err := ownPrograms()
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, p := range progs {
			p.Close()
		}
	}()
	var counted *ebpf.Program
	for _, p := range progs {
		if info, err := p.Info(); err == nil && info.Name == programNames[d] {
			if counted != nil {
				return nil, fmt.Errorf("this process holds two %s programs", programNames[d])
			}
			counted = p
		}
	}
	if counted == nil {
		return nil, fmt.Errorf("this process holds no %s program", programNames[d])
	}
	runtime.GC()
	if _, err := execN(st.plain, 200, -1, st.procs); err != nil { // warm caches and the JIT'd program
		return nil, err
	}
	rows = make([]costRow, len(kinds))
	for i, k := range kinds {
		rows[i] = costRow{driver: d, kind: k, programs: len(progs)}
	}
	// One window per round and kind; the figures are medians over rounds, so that a round that
	// other work on the machine disturbed (interrupts count in a program's run time) moves them
	// little.
	type window struct {
		delta     progStats
		readerCPU time.Duration
		wall      time.Duration
		events    uint64
	}
	wins := make([][]window, cfg.costRounds)
	for r := 0; r < cfg.costRounds; r++ {
		wins[r] = make([]window, len(kinds))
		for j := range kinds {
			i := (j + r) % len(kinds) // rotate the order so no kind always runs first
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			row := &rows[i]
			before, err := snapshot(progs, counted)
			if err != nil {
				return nil, err
			}
			rs0, err := ss.s.ReaderStats()
			if err != nil {
				return nil, err
			}
			events0 := ss.count(row.kind.exe)
			start := time.Now()
			if _, err := execN(row.kind.path(st), cfg.costExecs, -1, st.procs); err != nil {
				return nil, err
			}
			after, err := snapshot(progs, counted)
			if err != nil {
				return nil, err
			}
			// The reader's share ends when the window's last event reached the subscriber (the
			// kernel does not wake the reader per event: up to a flush interval later).
			if row.kind.upper {
				if err := ss.waitFor(row.kind.exe, events0+uint64(cfg.costExecs), 5*time.Second); err != nil {
					return nil, err
				}
			}
			rs1, err := ss.s.ReaderStats()
			if err != nil {
				return nil, err
			}
			w := window{delta: after.sub(before), readerCPU: rs1.CPU - rs0.CPU, wall: time.Since(start), events: ss.count(row.kind.exe) - events0}
			if w.delta.runs < uint64(cfg.costExecs) {
				return nil, fmt.Errorf("%s: the program ran %d times for %d execs: is bpf stats accounting on?", row.kind.name, w.delta.runs, cfg.costExecs)
			}
			wins[r][i] = w
			row.execs += uint64(cfg.costExecs)
			row.others += w.delta.runs - uint64(cfg.costExecs)
			row.events += w.events
		}
	}
	n := float64(cfg.costExecs)
	for r := range wins {
		// The reader wakes every flush interval whether or not there are events: its CPU time
		// per second in the round's windows without events (ordinary and lower-layer execs) is
		// that idle cost, which an event's own share leaves out.
		var idleCPU, idleWall time.Duration
		var plainNanos float64
		for i, w := range wins[r] {
			if !kinds[i].upper {
				idleCPU += w.readerCPU
				idleWall += w.wall
			}
			if !kinds[i].overlay {
				plainNanos = float64(w.delta.runtime.Nanoseconds()) / float64(w.delta.runs)
			}
		}
		idlePerSec := idleCPU.Seconds() / idleWall.Seconds()
		for i, w := range wins[r] {
			row := &rows[i]
			// Overlay windows take other processes' runs out at the ordinary-file rate.
			kernel := plainNanos
			if kinds[i].overlay {
				others := float64(w.delta.runs) - n
				kernel = (float64(w.delta.runtime.Nanoseconds()) - others*plainNanos) / n
			}
			perEvent := max(0, w.readerCPU.Seconds()-idlePerSec*w.wall.Seconds()) * 1e9 / float64(max(1, w.events))
			row.rounds.kernel = append(row.rounds.kernel, kernel)
			row.rounds.reader = append(row.rounds.reader, float64(w.readerCPU.Nanoseconds())/n)
			row.rounds.idle = append(row.rounds.idle, idlePerSec)
			row.rounds.event = append(row.rounds.event, perEvent)
			row.rounds.e2e = append(row.rounds.e2e, kernel+perEvent)
		}
	}
	for i := range rows {
		row := &rows[i]
		row.nanos = median(row.rounds.kernel)
		row.readerNanos = median(row.rounds.reader)
		row.idlePerSec = median(row.rounds.idle)
		row.eventNanos = median(row.rounds.event)
		row.e2eNanos = median(row.rounds.e2e)
	}
	// Drops counts the ring buffer's output failures too, which Lost never saw.
	if drops := ss.s.Drops(); drops.Kernel > 0 || drops.User > 0 {
		progress("%s: %d events lost in the kernel, %d dropped in user space", d, drops.Kernel, drops.User)
	}
	return rows, nil
}

func printCosts(cfg config, rows []costRow) {
	fmt.Printf("Cost per exec, %d rounds x %d execs per exec kind and driver; each figure the median of the rounds' figures:\n", cfg.costRounds, cfg.costExecs)
	fmt.Println("  IN KERNEL: run time / runs of every BPF program the sensor loaded, from the kernel's BPF statistics")
	fmt.Println("  READER: CPU time of the sensor's reader thread (wait, read, decode, hand to subscribers) / execs, in")
	fmt.Println("    the same windows, up to the last event's arrival; it wakes every flush interval (100 ms) even with")
	fmt.Println("    no events: READER IDLE is that CPU time per second, from the windows without events")
	fmt.Println("  PER EVENT: for kinds that send events, the reader's CPU per event beyond its idle cost")
	fmt.Println("  END TO END: IN KERNEL + PER EVENT, what an upper-layer exec event costs from the exec to its delivery")
	fmt.Printf("  budgets: ordinary and lower-layer execs <= %.0f ns in the kernel; an upper-layer exec event <= %.0f ns end to end\n", cfg.targetNanos, cfg.targetUpper)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "DRIVER\tEXEC KIND\tOUR EXECS\tOTHER EXECS\tEVENTS\tIN KERNEL NS\tRANGE\tREADER NS\tREADER IDLE US/S\tPER EVENT NS\tEND TO END NS\tRANGE\tBUDGET\t")
	for _, r := range rows {
		limit, figure := cfg.targetNanos, r.nanos
		perEvent, e2e, e2eRange := "-", "-", "-"
		if r.kind.upper {
			limit, figure = cfg.targetUpper, r.e2eNanos
			perEvent, e2e = fmt.Sprintf("%.0f", r.eventNanos), fmt.Sprintf("%.0f", figure)
			e2eRange = fmt.Sprintf("%.0f-%.0f", minOf(r.rounds.e2e), maxOf(r.rounds.e2e))
		}
		budget := fmt.Sprintf("%.0f ns %s", limit, map[bool]string{true: "ok", false: "OVER"}[figure <= limit])
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.0f\t%.0f-%.0f\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t\n", r.driver, r.kind.name, r.execs, r.others, r.events,
			r.nanos, minOf(r.rounds.kernel), maxOf(r.rounds.kernel), r.readerNanos, r.idlePerSec*1e6, perEvent, e2e, e2eRange, budget)
	}
	tw.Flush()
	fmt.Printf("(%d BPF program(s) per driver; OTHER EXECS: program runs for other processes' execs in the same windows,\n", rows[0].programs)
	fmt.Println(" which overlay rows subtract at the ordinary-file rate; not counted: what subscribers do with an event")
	fmt.Println(" and alert output, off here)")
}

type tputResult struct {
	name   string
	rates  []float64 // execs per second, one per round
	ratios []float64 // rate / the baseline's rate in the same round
	// bestRatios compare the blocks' least disturbed stretches (execResult.bestSub).
	bestRatios []float64
	cpu        []float64 // CPU microseconds per exec (loop, children, sensor reader), one per round
	cpuRat     []float64 // the baseline's cpu in the same round / cpu: execs per CPU-second, relative
}

// tputKinds are the execs the throughput runs time: an ordinary file, an overlay lower layer (a
// container's own processes) and an overlay upper layer (the sensor sends an event).
var tputKinds = kinds

// measureThroughput times blocks of execs with no sensor and with each driver's sensor, the
// configurations interleaved block by block: in every round, for each exec kind, one block per
// configuration back to back (the order rotating from round to round), so that the machine's
// load, which moves over seconds on a shared machine, is about the same for the blocks compared.
// "No sensor" has none loaded at all; a driver's block starts a fresh sensor before the timer
// starts (about 20-40 ms). It keeps per-round ratios against the no-sensor block of the same
// round and kind, and returns one result list per entry of tputKinds.
func measureThroughput(ctx context.Context, cfg config, st *stage) ([][]*tputResult, error) {
	names := []string{"no sensor"}
	for _, d := range cfg.drivers {
		names = append(names, string(d))
	}
	results := make([][]*tputResult, len(tputKinds))
	for k := range tputKinds {
		for _, n := range names {
			results[k] = append(results[k], &tputResult{name: n})
		}
	}
	var ss *startedSensor
	defer func() {
		if ss != nil {
			ss.close()
		}
	}()
	running := 0 // index into names of the configuration in place
	use := func(i int) error {
		if i == running {
			return nil
		}
		if ss != nil {
			if err := ss.close(); err != nil {
				return fmt.Errorf("%s: %w", names[running], err)
			}
			ss = nil
		}
		running = 0
		if i > 0 {
			var err error
			if ss, err = startSensor(cfg.drivers[i-1]); err != nil {
				return fmt.Errorf("%s: %w", names[i], err)
			}
			running = i
		}
		return nil
	}
	for r := 0; r < cfg.tputRounds; r++ {
		for kk := range tputKinds {
			k := (kk + r) % len(tputKinds)
			rates := make([]float64, len(names))
			bests := make([]float64, len(names))
			cpus := make([]float64, len(names))
			for j := range names {
				i := (j + r + kk) % len(names)
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				err := use(i)
				if err != nil {
					return nil, err
				}
				// Loading a sensor leaves garbage; collect it now so the GC does not compete
				// with the timed execs. Every configuration gets the same treatment.
				runtime.GC()
				var rs0, rs1 sensor.ReaderStats
				if ss != nil {
					if rs0, err = ss.s.ReaderStats(); err != nil {
						return nil, err
					}
				}
				var events0 uint64
				if ss != nil && tputKinds[k].upper {
					events0 = ss.count(tputKinds[k].exe)
				}
				res, err := execN(tputKinds[k].path(st), cfg.tputExecs, cfg.pin, st.procs)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", names[i], err)
				}
				if ss != nil {
					// The block's last events reach the reader up to a flush interval later: its
					// CPU for them belongs to this block (as measureCost counts it).
					if tputKinds[k].upper {
						if err := ss.waitFor(tputKinds[k].exe, events0+uint64(cfg.tputExecs), 5*time.Second); err != nil {
							return nil, err
						}
					}
					if rs1, err = ss.s.ReaderStats(); err != nil {
						return nil, err
					}
				}
				rates[i] = float64(cfg.tputExecs) / res.elapsed.Seconds()
				if res.bestSub > 0 {
					bests[i] = subBlock / res.bestSub.Seconds()
				}
				cpus[i] = float64((res.childCPU + res.selfCPU + rs1.CPU - rs0.CPU).Nanoseconds()) / 1e3 / float64(cfg.tputExecs)
			}
			for i := range names {
				res := results[k][i]
				res.rates = append(res.rates, rates[i])
				res.ratios = append(res.ratios, rates[i]/rates[0])
				res.bestRatios = append(res.bestRatios, bests[i]/bests[0])
				res.cpu = append(res.cpu, cpus[i])
				res.cpuRat = append(res.cpuRat, cpus[0]/cpus[i])
			}
		}
		if (r+1)%5 == 0 || r+1 == cfg.tputRounds {
			progress("throughput round %d/%d done", r+1, cfg.tputRounds)
		}
	}
	return results, nil
}

func printThroughput(cfg config, results [][]*tputResult) {
	fmt.Printf("Exec throughput (fork+exec+wait of the tiny executable from a helper process), %d rounds, each a block of %d execs\n", cfg.tputRounds, cfg.tputExecs)
	fmt.Println("per exec kind and configuration, the configurations back to back in a rotating order")
	if cfg.pin >= 0 {
		fmt.Printf("(the exec loop and its children pinned to CPU %d at nice -20, with and without a sensor alike)\n", cfg.pin)
	}
	fmt.Println("  THROUGHPUT RATIO: execs per wall-clock second of the whole block, with the sensor / without")
	fmt.Printf("  BEST-STRETCH RATIO: the same for each block's fastest %d consecutive execs (other work only slows execs down)\n", subBlock)
	fmt.Println("  CPU RATIO: execs per CPU second with / without, the CPU being the loop's, its children's and the sensor reader's")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "EXEC KIND\tSENSOR\tEXECS/S MEDIAN\tMIN\tMAX\tTHROUGHPUT RATIO\tRANGE\tBEST-STRETCH RATIO\tRANGE\tCPU US/EXEC\tCPU RATIO\tRANGE\t")
	for k, list := range results {
		for i, r := range list {
			cells := []string{"1", "-", "1", "-", "1", "-"}
			if i > 0 {
				cells = nil
				for _, v := range [][]float64{r.ratios, r.bestRatios, r.cpuRat} {
					m := median(v)
					cells = append(cells, fmt.Sprintf("%.3f %s", m, okOver(m >= 0.98)), fmt.Sprintf("%.2f-%.2f", minOf(v), maxOf(v)))
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\t\n", tputKinds[k].name, r.name,
				median(r.rates), minOf(r.rates), maxOf(r.rates), cells[0], cells[1], cells[2], cells[3], median(r.cpu), cells[4], cells[5])
		}
	}
	tw.Flush()
	fmt.Println("(target: throughput ratio at least 0.98 for every kind and driver; ratios are medians of per-round")
	fmt.Println(" ratios against the no-sensor block of the same round and kind. Whole-block throughput moves with the")
	fmt.Println(" machine's load; the best stretch and the CPU time per exec much less so: on a busy shared machine")
	fmt.Println(" trust those more. The sensor's reader works in batches, mostly outside a best stretch: the CPU ratio")
	fmt.Println(" counts it)")
}

func okOver(ok bool) string {
	if ok {
		return "ok"
	}
	return "LOW"
}

type machineInfo struct{ cpu, kernel string }

func machine() machineInfo {
	m := machineInfo{cpu: "unknown CPU", kernel: "unknown kernel"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.kernel = unix.ByteSliceToString(u.Release[:])
	}
	return m
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func mustLen(b []byte, err error) int {
	if err != nil {
		return 0
	}
	return len(b)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = min(m, x)
	}
	return m
}

func maxOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

// machineBusy is the CPU time all CPUs spent not idle, from /proc/stat.
func machineBusy() time.Duration {
	f := cpuLine()
	if len(f) < 8 {
		return 0
	}
	var busy uint64
	for i, v := range f[:8] { // user nice system idle iowait irq softirq steal
		if i == 3 || i == 4 {
			continue
		}
		busy += v
	}
	return time.Duration(busy) * time.Second / time.Duration(clockTicks)
}

// stealFraction is the share of CPU time the hypervisor took since boot.
func stealFraction() float64 {
	f := cpuLine()
	if len(f) < 8 {
		return 0
	}
	var total uint64
	for _, v := range f[:8] {
		total += v
	}
	if total == 0 {
		return 0
	}
	return float64(f[7]) / float64(total)
}

// clockTicks is USER_HZ, the unit of /proc/stat; 100 on every Linux architecture Go supports.
const clockTicks = 100

func cpuLine() []uint64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 2 || fields[0] != "cpu" {
		return nil
	}
	var out []uint64
	for _, f := range fields[1:] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return nil
		}
		out = append(out, v)
	}
	return out
}

// ownCPU is the CPU time of this process and its waited-for children.
func ownCPU() time.Duration {
	var self, children unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &self)
	_ = unix.Getrusage(unix.RUSAGE_CHILDREN, &children)
	return time.Duration(self.Utime.Nano() + self.Stime.Nano() + children.Utime.Nano() + children.Stime.Nano())
}
