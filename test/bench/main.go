// Command bench measures what DriverPilot's built-in exec sensor (agent/sensor) costs, for each
// driver. It is a benchmark, not a test: it prints figures and fails only when it cannot measure.
//
//  1. In-kernel cost per exec: the kernel's BPF run-time statistics of the sensor's program
//     (run time / run count), separately for execs of an ordinary file (the program filters them
//     out and sends nothing), from an overlay lower layer (the program decides the layer and, with
//     no self-test asking, sends nothing: nearly every exec on a Kubernetes node is one) and from
//     an overlay upper layer (it sends an event, without waking the reader per event).
//  2. Exec throughput: fork+exec of a tiny static executable N times with and without the sensor,
//     the configurations interleaved round by round so drift on a shared machine cancels out.
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
}

func main() {
	var cfg config
	drivers := flag.String("drivers", "modern_ebpf,ebpf", "drivers to measure, comma-separated")
	flag.IntVar(&cfg.costExecs, "n", 2000, "execs per exec kind and round for the in-kernel cost")
	flag.IntVar(&cfg.costRounds, "rounds", 5, "rounds of the in-kernel cost measurement")
	flag.IntVar(&cfg.tputExecs, "tn", 1000, "execs per configuration and round for the throughput")
	flag.IntVar(&cfg.tputRounds, "trounds", 15, "rounds of the throughput measurement")
	flag.StringVar(&cfg.workdir, "workdir", "/var/tmp", "directory on an ordinary (not overlay) filesystem for the staged executables")
	flag.Float64Var(&cfg.targetNanos, "target-ns", 500, "per-exec budget for ordinary and overlay lower-layer execs, shown beside the figure")
	flag.Float64Var(&cfg.targetUpper, "target-upper-ns", 2000, "per-exec budget for overlay upper-layer execs (they send an event)")
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
	delta  progStats
	// others counts program runs for execs that were not ours (other processes on the machine).
	others uint64
	events uint64
	// nanos is the cost per exec of this kind; for overlay kinds the other processes' runs are
	// taken out at the ordinary-file rate.
	nanos float64
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
		r, err := measureCost(ctx, cfg, st, d)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", d, err)
		}
		rows = append(rows, r...)
	}
	return rows, how, nil
}

func measureCost(ctx context.Context, cfg config, st *stage, d v1alpha1.Driver) (rows []costRow, err error) {
	ss, err := startSensor(d)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, ss.close()) }()
	progs, err := ownPrograms(programNames[d])
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, p := range progs {
			p.Close()
		}
	}()
	if len(progs) != 1 {
		return nil, fmt.Errorf("want one %s program, this process holds %d", programNames[d], len(progs))
	}
	prog := progs[0]
	runtime.GC()
	if _, err := execN(st.plain, 200); err != nil { // warm caches and the JIT'd program
		return nil, err
	}
	rows = make([]costRow, len(kinds))
	for i, k := range kinds {
		rows[i] = costRow{driver: d, kind: k}
	}
	for r := 0; r < cfg.costRounds; r++ {
		for j := range kinds {
			i := (j + r) % len(kinds) // rotate the order so no kind always runs first
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			before, err := snapshot(prog)
			if err != nil {
				return nil, err
			}
			if _, err := execN(kinds[i].path(st), cfg.costExecs); err != nil {
				return nil, err
			}
			after, err := snapshot(prog)
			if err != nil {
				return nil, err
			}
			delta := after.sub(before)
			rows[i].delta.runtime += delta.runtime
			rows[i].delta.runs += delta.runs
			rows[i].execs += uint64(cfg.costExecs)
		}
	}
	time.Sleep(200 * time.Millisecond) // let the last events reach the subscriber
	var plainNanos float64
	for i := range rows {
		row := &rows[i]
		if row.delta.runs < row.execs {
			return nil, fmt.Errorf("%s: the program ran %d times for %d execs: is bpf stats accounting on?", row.kind.name, row.delta.runs, row.execs)
		}
		row.others = row.delta.runs - row.execs
		row.events = ss.count(row.kind.exe)
		if !row.kind.overlay {
			plainNanos = float64(row.delta.runtime.Nanoseconds()) / float64(row.delta.runs)
			row.nanos = plainNanos
			continue
		}
		row.nanos = (float64(row.delta.runtime.Nanoseconds()) - float64(row.others)*plainNanos) / float64(row.execs)
	}
	// Drops counts the ring buffer's output failures too, which Lost never saw.
	if drops := ss.s.Drops(); drops.Kernel > 0 || drops.User > 0 {
		progress("%s: %d events lost in the kernel, %d dropped in user space", d, drops.Kernel, drops.User)
	}
	return rows, nil
}

func printCosts(cfg config, rows []costRow) {
	fmt.Printf("In-kernel cost per exec (program run_time_ns / run_cnt from the kernel's BPF statistics), %d rounds x %d execs\n",
		cfg.costRounds, cfg.costExecs)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "DRIVER\tEXEC KIND\tOUR EXECS\tOTHER EXECS\tEVENTS\tNS PER EXEC\tBUDGET\t")
	for _, r := range rows {
		limit := cfg.targetNanos
		if r.kind.upper {
			limit = cfg.targetUpper
		}
		budget := fmt.Sprintf("%.0f ns %s", limit, map[bool]string{true: "ok", false: "OVER"}[r.nanos <= limit])
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.0f\t%s\t\n", r.driver, r.kind.name, r.execs, r.others, r.events, r.nanos, budget)
	}
	tw.Flush()
	fmt.Println("(OTHER EXECS: runs for other processes' execs in the same windows; overlay rows subtract them at the ordinary-file rate)")
}

type tputResult struct {
	name   string
	rates  []float64 // execs per second, one per round
	ratios []float64 // rate / the baseline's rate in the same round
	cpu    []float64 // children's CPU microseconds per exec, one per round
	cpuRat []float64 // cpu / the baseline's cpu in the same round
}

// tputKinds are the execs the throughput runs time: an ordinary file, an overlay lower layer (a
// container's own processes) and an overlay upper layer (the sensor sends an event).
var tputKinds = kinds

// measureThroughput interleaves "no sensor" and each driver within every round, rotating the
// order, and keeps per-round ratios against the baseline of the same round. It returns one result
// list per entry of tputKinds.
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
	for r := 0; r < cfg.tputRounds; r++ {
		rates := make([][]float64, len(tputKinds))
		cpus := make([][]float64, len(tputKinds))
		for k := range tputKinds {
			rates[k] = make([]float64, len(names))
			cpus[k] = make([]float64, len(names))
		}
		for j := range names {
			i := (j + r) % len(names)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			var ss *startedSensor
			if i > 0 {
				var err error
				if ss, err = startSensor(cfg.drivers[i-1]); err != nil {
					return nil, fmt.Errorf("%s: %w", names[i], err)
				}
			}
			// Loading the sensor parses the kernel's BTF; collect that garbage now so the GC does
			// not compete with the timed execs. The baseline gets the same treatment.
			runtime.GC()
			_, err := execN(st.plain, 100) // warm-up
			for kk := 0; kk < len(tputKinds) && err == nil; kk++ {
				k := (kk + r) % len(tputKinds)
				var cpu time.Duration
				start := time.Now()
				cpu, err = execN(tputKinds[k].path(st), cfg.tputExecs)
				rates[k][i] = float64(cfg.tputExecs) / time.Since(start).Seconds()
				cpus[k][i] = float64(cpu.Microseconds()) / float64(cfg.tputExecs)
			}
			if ss != nil {
				err = errors.Join(err, ss.close())
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", names[i], err)
			}
		}
		for k := range tputKinds {
			for i := range names {
				res := results[k][i]
				res.rates = append(res.rates, rates[k][i])
				res.ratios = append(res.ratios, rates[k][i]/rates[k][0])
				res.cpu = append(res.cpu, cpus[k][i])
				res.cpuRat = append(res.cpuRat, cpus[k][i]/cpus[k][0])
			}
		}
		progress("throughput round %d/%d done", r+1, cfg.tputRounds)
	}
	return results, nil
}

func printThroughput(cfg config, results [][]*tputResult) {
	fmt.Printf("Exec throughput (fork+exec+wait of the tiny executable), %d interleaved rounds x %d execs\n", cfg.tputRounds, cfg.tputExecs)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "EXEC KIND\tSENSOR\tEXECS/S MEDIAN\tMIN\tMAX\tTHROUGHPUT RATIO\tRANGE\tCHILD CPU US/EXEC\tCPU RATIO\tRANGE\t")
	for k, list := range results {
		for i, r := range list {
			ratio, rng, cpuRatio, cpuRng := "1", "-", "1", "-"
			if i > 0 {
				ratio = fmt.Sprintf("%.3f", median(r.ratios))
				rng = fmt.Sprintf("%.2f-%.2f", minOf(r.ratios), maxOf(r.ratios))
				cpuRatio = fmt.Sprintf("%.3f", median(r.cpuRat))
				cpuRng = fmt.Sprintf("%.2f-%.2f", minOf(r.cpuRat), maxOf(r.cpuRat))
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.0f\t%s\t%s\t%.1f\t%s\t%s\t\n", tputKinds[k].name, r.name,
				median(r.rates), minOf(r.rates), maxOf(r.rates), ratio, rng, median(r.cpu), cpuRatio, cpuRng)
		}
	}
	tw.Flush()
	fmt.Println("(target: throughput ratio at least 0.98 for every kind and driver)")
	fmt.Println("(ratios are medians of per-round ratios against the no-sensor run of the same round; throughput")
	fmt.Println(" is wall-clock and moves with the machine's load, child CPU time per exec much less so; the")
	fmt.Println(" sensor's reader wakes in this process, so its cost shows in throughput, not in child CPU time)")
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
