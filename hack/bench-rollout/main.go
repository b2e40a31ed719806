// Command bench-rollout measures DriverPilot's rollout loop at scale against a real control
// plane (envtest's kube-apiserver and etcd): N Node objects, one SecurityProfile selecting them
// (or -profiles K, one per label group of N/K nodes, with the same rollout settings), N
// simulated agents (internal/simagent: probe and verdict status patches, heartbeats through a
// Lease per node), and the real manager binary running as a separate process so its peak memory
// and its API writes can be measured on their own. An audit log of the manager's and the agents'
// users counts every write.
//
// One run measures, in this order:
//   - the API server's raw write rate, before the manager starts: the three writes a rollout
//     makes per predicted node (NodeSensor create with the selection engine's driver, candidates
//     and reasons, facts-and-verdict status patch, node condition strategic-merge patch) on
//     scratch NodeSensors and a scratch condition, with 16, 32 and 64 concurrent
//     writers (-raw-workers) on one unthrottled client, the best level kept; cleaned up untimed;
//   - the rollout: the time from the profiles' creation until every node carries
//     RuntimeSecurityReady=True (reason Verified), the manager's API writes per node by resource,
//     the rollout's write rate (manager and agent writes until convergence over that time) as a
//     share of the raw rate, the manager's peak RSS (VmHWM) and CPU;
//   - the steady state (-steady, 90s): the agents' and the manager's successful writes in a
//     window that starts after convergence once every agent renewed its heartbeat Lease once (so
//     the Leases' one-time creation is not in it), per node per minute, and bytes per node per
//     minute (each resource's writes times the mean JSON size, managed fields included, of up to
//     20 of its objects read back at the window's end; also shown without managed fields); the
//     manager's reconcile passes and CPU in the window;
//   - with -upgrade: the manager is replaced by a second build of a newer version and every
//     simulated agent reports that version (as if the new DaemonSet template replaced every
//     agent pod at once); the time until every node is verified again by the new version, and
//     how often a node left Verified meanwhile.
//
// Each run ends with one machine-readable line (bench-rollout-row: JSON); -table prints the
// growth table from such lines (hack/bench-rollout.sh without arguments runs it).
//
//	go run ./hack/bench-rollout -nodes 1000
//
// It is a benchmark, not a test: it reports against the targets and never fails on them. It
// exits non-zero only when the rollout (or the upgrade) did not converge before -timeout, or on a
// setup error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/driverpilot/driverpilot/agent"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/scheme"
	"github.com/driverpilot/driverpilot/internal/testenv"
)

const (
	managerUser  = "driverpilot-manager"
	agentsUser   = "bench-agents"
	namespace    = "driverpilot-system"
	profileName  = "bench-rollout"
	nodeLabelKey = "bench-rollout.driverpilot.io/node"

	// Targets the figures are reported against (issue 13).
	targetConverge      = 30 * time.Second
	targetConvergeNodes = 5000
	targetWritesPerNode = 3.0
	targetRSSMiB        = 150.0 // at targetConvergeNodes
	targetRawRatio      = 0.5
	targetSteadyBytes   = 1024.0 // per node per minute, agents and manager together
	// Ten profiles converge "as fast as" one: within this factor of one profile's time.
	targetProfilesFactor = 1.1
	// An upgrade of every agent finishes "in the same order of time" as a first rollout: within
	// this factor of its time.
	targetUpgradeFactor = 3
)

type options struct {
	nodes          int
	maxUnavailable string
	selfTestDelay  time.Duration
	heartbeat      time.Duration
	timeout        time.Duration
	settle         time.Duration
	agentQPS       float64
	agentBurst     int
	agentWorkers   int
	managerBin     string
	managerArgs    string
	keep           bool
	profiles       int
	rawItems       int
	rawWorkers     string
	steady         time.Duration
	upgrade        bool
	table          bool
	cpuProfile     string
}

func main() {
	var o options
	flag.IntVar(&o.nodes, "nodes", 1000, "number of simulated nodes")
	flag.StringVar(&o.maxUnavailable, "max-unavailable", "10%", "the profile's spec.rollout.maxUnavailable (a count or a percentage)")
	flag.DurationVar(&o.selfTestDelay, "selftest-delay", 200*time.Millisecond, "how long a simulated agent's self-test takes")
	flag.DurationVar(&o.heartbeat, "heartbeat", agent.DefaultHeartbeat, "simulated agents' heartbeat period (the real agent's default)")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "overall time limit (setup, rollout and teardown)")
	flag.DurationVar(&o.settle, "settle", 3*time.Second, "how long to keep counting manager writes after convergence")
	flag.Float64Var(&o.agentQPS, "agent-qps", 0, "client QPS of the simulated agents (all share one client; 0: no client-side limit, as N real agents with a client each)")
	flag.IntVar(&o.agentBurst, "agent-burst", 1000, "client burst of the simulated agents")
	flag.IntVar(&o.agentWorkers, "agent-workers", 0, "concurrent writers of the simulated agents (0: one per 250 nodes, at least 32)")
	flag.StringVar(&o.managerBin, "manager-bin", "", "prebuilt driverpilot binary (default: go build ./cmd/driverpilot into the temp dir)")
	flag.StringVar(&o.managerArgs, "manager-args", "", "extra arguments for `driverpilot manager`, space separated")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir (audit log, manager log) and print its path")
	flag.IntVar(&o.profiles, "profiles", 1, "split the nodes into this many label groups, one profile each (same rollout settings)")
	flag.IntVar(&o.rawItems, "raw-items", 1000, "raw API write rate: scratch nodes per level, 3 writes each (0: skip the measurement)")
	flag.StringVar(&o.rawWorkers, "raw-workers", "16,32,64", "raw API write rate: the levels of concurrent writers, comma separated; the best counts")
	flag.DurationVar(&o.steady, "steady", 90*time.Second, "steady-state window after convergence (and -settle) in which writes and bytes per node are counted, rounded to whole heartbeat periods (0: skip)")
	flag.BoolVar(&o.upgrade, "upgrade", false, "after the steady window, replace the manager and every agent with a new version and time the re-verification")
	flag.BoolVar(&o.table, "table", false, "read the report lines of earlier runs (files named as arguments, or stdin) and print the growth table")
	flag.StringVar(&o.cpuProfile, "cpu-profile", "", "record CPU profiles of the API server and of this process (the simulated agents) over the first 25s of the rollout into this directory (apiserver.pprof, bench.pprof); the manager's own: -manager-args --pprof-bind-address=...")
	flag.Parse()
	if o.table {
		if err := printTable(os.Stdout, flag.Args()); err != nil {
			fmt.Fprintln(os.Stderr, "bench-rollout:", err)
			os.Exit(1)
		}
		return
	}
	if o.nodes < 1 || o.profiles < 1 || o.profiles > o.nodes {
		fmt.Fprintln(os.Stderr, "bench-rollout: -nodes must be at least 1 and -profiles between 1 and -nodes")
		os.Exit(2)
	}
	if o.agentWorkers <= 0 {
		o.agentWorkers = max(32, o.nodes/250)
	}

	// The benchmark's own controller-runtime clients log errors only.
	crlog.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	code := 0
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-rollout: error:", err)
		code = 1
	}
	cancel()
	stop()
	os.Exit(code)
}

// cleanups run in reverse order; run always runs them, on success, error or interrupt.
type cleanups struct{ fns []func() }

func (c *cleanups) add(f func()) { c.fns = append(c.fns, f) }
func (c *cleanups) run() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
	c.fns = nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench-rollout: "+format+"\n", args...)
}

func run(ctx context.Context, o options) (err error) {
	var cl cleanups
	defer cl.run()

	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	if err := ensureAssets(ctx, root); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "bench-rollout-")
	if err != nil {
		return err
	}
	cl.add(func() {
		if o.keep {
			logf("kept %s", tmp)
			return
		}
		_ = os.RemoveAll(tmp)
	})

	mach := readMachine()
	load0 := loadAvg()
	commit := gitCommit(root)

	// Build the manager while the control plane starts.
	bin := o.managerBin
	buildErr := make(chan error, 1)
	if bin == "" {
		bin = filepath.Join(tmp, "driverpilot")
		go func() { buildErr <- buildManager(ctx, root, bin) }()
	} else {
		buildErr <- nil
	}

	upgradeBin := filepath.Join(tmp, "driverpilot-upgrade")
	upgradeErr := make(chan error, 1)
	if o.upgrade {
		go func() { upgradeErr <- buildUpgradeManager(ctx, root, upgradeBin) }()
	} else {
		upgradeErr <- nil
	}

	auditLog := filepath.Join(tmp, "audit.log")
	env, err := startControlPlane(root, tmp, auditLog)
	if err != nil {
		<-buildErr
		return err
	}
	cl.add(func() {
		if err := env.Stop(); err != nil {
			logf("stop control plane: %v", err)
		}
	})
	if err := <-buildErr; err != nil {
		return fmt.Errorf("build manager: %w", err)
	}
	if err := <-upgradeErr; err != nil {
		return fmt.Errorf("build the upgraded manager: %w", err)
	}

	admin := rest.CopyConfig(env.Config)
	admin.QPS, admin.Burst = 1000, 2000
	s := scheme.New()
	adminClient, err := client.New(admin, client.Options{Scheme: s})
	if err != nil {
		return err
	}
	mgrUser, err := env.AddUser(envtest.User{Name: managerUser, Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("add manager user: %w", err)
	}
	agUser, err := env.AddUser(envtest.User{Name: agentsUser, Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("add agents user: %w", err)
	}
	kubeconfig, err := mgrUser.KubeConfig()
	if err != nil {
		return err
	}
	kubeconfigPath := filepath.Join(tmp, "manager.kubeconfig")
	if err := os.WriteFile(kubeconfigPath, kubeconfig, 0o600); err != nil {
		return err
	}

	if err := adminClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace: %w", err)
	}
	names, err := createNodes(ctx, adminClient, o.nodes, o.profiles)
	if err != nil {
		return err
	}
	logf("created %d nodes", len(names))

	// The API server's own write rate, before anything else writes.
	var raw rawResult
	if o.rawItems > 0 {
		levels, err := parseLevels(o.rawWorkers)
		if err != nil {
			return err
		}
		if raw, err = measureRaw(ctx, admin, s, names, o.rawItems, levels); err != nil {
			return fmt.Errorf("raw write rate: %w", err)
		}
	}

	// The manager, as the product runs it.
	mgr, err := startManager(ctx, bin, kubeconfigPath, tmp, o.managerArgs)
	if err != nil {
		return err
	}
	cl.add(mgr.stop)
	if err := mgr.waitStarted(ctx, time.Minute); err != nil {
		return err
	}
	logf("manager running (pid %d, workers started)", mgr.cmd.Process.Pid)

	// Simulated agents and the observer share one informer cache.
	agentCfg := agUser.Config()
	agentCfg.QPS, agentCfg.Burst = float32(o.agentQPS), o.agentBurst
	if o.agentQPS <= 0 {
		agentCfg.QPS = -1 // the workers bound the agents' concurrency
	}
	simCtx, simCancel := context.WithCancel(ctx)
	sim, err := startSim(simCtx, agentCfg, s, names, o)
	if err != nil {
		simCancel()
		return err
	}
	cl.add(func() { simCancel(); sim.Wait() })

	// Go.
	profiles := newProfiles(o.profiles, o.maxUnavailable, v1alpha1.FleetLearning(*learning))
	users := findCPUUsers(mgr.cmd.Process.Pid)
	cpu0 := users.snap()
	t0 := time.Now()
	sim.obs.start(t0)
	for _, profile := range profiles {
		if err := adminClient.Create(ctx, profile); err != nil {
			return fmt.Errorf("create profile: %w", err)
		}
	}
	var profiled <-chan error
	if o.cpuProfile != "" {
		profiled = profileRollout(ctx, admin, o.cpuProfile, 25*time.Second)
		// An error return waits for the profiles too, so they are whole.
		defer func() {
			if profiled != nil {
				<-profiled
			}
		}()
	}
	logf("%d profile(s) created; waiting for %d nodes to be Verified (timeout %s)", len(profiles), o.nodes, o.timeout)

	converged := false
	progressTick := time.NewTicker(5 * time.Second)
	defer progressTick.Stop()
wait:
	for {
		select {
		case <-sim.obs.allReady:
			converged = true
			break wait
		case <-ctx.Done():
			break wait
		case <-progressTick.C:
			p := sim.obs.snapshot()
			logf("t+%4.1fs: %d sensors, %d assigned, %d verdicts, %d nodes Verified, manager VmHWM %s",
				time.Since(t0).Seconds(), p.sensors, p.assigned, sim.Stats().Verdicts, p.ready, mib(mgr.mem.hwm.Load()))
		}
	}
	cpu1 := users.snap() // as the wait saw convergence
	var tReady time.Time
	if converged {
		tReady = sim.obs.readyAt()
		logf("all %d nodes Verified after %.2fs; settling %s", o.nodes, tReady.Sub(t0).Seconds(), o.settle)
		select {
		case <-time.After(o.settle):
		case <-ctx.Done():
		}
	} else {
		logf("NOT converged: %v", context.Cause(ctx))
	}
	tEnd := time.Now()
	if profiled != nil {
		if err := <-profiled; err != nil {
			logf("%v", err)
		}
		profiled = nil
	}
	prog := sim.obs.snapshot()
	metrics := mgr.scrapeMetrics()
	mgrCPU := mgr.cpuSeconds()
	hwm := mgr.mem.final()
	mgrLog := mgr.logSummary()
	loadRollout := loadAvg()

	// Steady state: the converged fleet left alone.
	var steady *steadyWindow
	if converged && o.steady > 0 {
		waitLeases(ctx, sim, o)
		window := steadyLength(o.steady, o.heartbeat)
		logf("steady state: counting writes for %s", window)
		steady = &steadyWindow{from: time.Now(), cpu0: mgr.cpuSeconds(), reconciles0: mgr.metricSum("controller_runtime_reconcile_total")}
		select {
		case <-time.After(window):
		case <-ctx.Done():
		}
		steady.to = time.Now()
		steady.cpu1, steady.reconciles1 = mgr.cpuSeconds(), mgr.metricSum("controller_runtime_reconcile_total")
		steady.left = sim.obs.snapshot().left - prog.left
		steady.sizes = sampleSizes(ctx, adminClient)
	}

	// Upgrade: a new manager and new agents re-verify the fleet.
	var up *upgradeResult
	var upErr error
	if converged && o.upgrade && ctx.Err() == nil {
		res, mgr2, err := runUpgrade(ctx, o, mgr, upgradeBin, kubeconfigPath, tmp, sim)
		up, upErr = &res, err
		if mgr2 != nil {
			cl.add(mgr2.stop)
			mgr2.stop()
		}
	}
	simCancel()
	sim.Wait()
	mgr.stop()
	load1 := loadAvg()
	// Stopping the apiserver flushes the audit log.
	if err := env.Stop(); err != nil {
		logf("stop control plane: %v", err)
	}
	audit, err := readAudit(auditLog, t0, tReady, tEnd)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}

	r := report{
		o: o, mach: mach, load0: load0, load1: load1, t0: t0, tReady: tReady, tEnd: tEnd,
		converged: converged, prog: prog, audit: audit, hwm: hwm, peakRSS: mgr.mem.rss.Load(), mgrCPU: mgrCPU,
		simStats: sim.Stats(), metrics: metrics, mgrLog: mgrLog,
		loadRollout: loadRollout, cpu0: cpu0, cpu1: cpu1, raw: raw, steady: steady, up: up, commit: commit,
	}
	r.print(os.Stdout)
	printMixed(os.Stdout)
	r.printRow(os.Stdout)
	if upErr != nil {
		return upErr
	}
	if !converged {
		if errors.Is(ctx.Err(), context.Canceled) {
			return errors.New("interrupted before the rollout converged")
		}
		return fmt.Errorf("the rollout did not converge within -timeout %s", o.timeout)
	}
	return nil
}

// ensureAssets sets KUBEBUILDER_ASSETS from hack/envtest-assets.sh when it is not set.
func ensureAssets(ctx context.Context, root string) error {
	if os.Getenv("KUBEBUILDER_ASSETS") != "" {
		return nil
	}
	logf("KUBEBUILDER_ASSETS not set: running hack/envtest-assets.sh")
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "envtest-assets.sh"))
	cmd.Dir, cmd.Stderr = root, os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("hack/envtest-assets.sh: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return os.Setenv("KUBEBUILDER_ASSETS", strings.TrimSpace(lines[len(lines)-1]))
}

func buildManager(ctx context.Context, root, out string) error {
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "./cmd/driverpilot")
	cmd.Dir, cmd.Stdout, cmd.Stderr = root, os.Stderr, os.Stderr
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if err := cmd.Run(); err != nil {
		return err
	}
	logf("built the manager in %.1fs", time.Since(start).Seconds())
	return nil
}

// auditPolicy logs, at Metadata level, the writes of the manager and of the simulated agents
// and nothing else, so the log stays small.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["` + managerUser + `", "` + agentsUser + `"]
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`

// startControlPlane starts envtest with DriverPilot's CRDs (as testenv.Start does) and the
// audit log switched on.
func startControlPlane(root, tmp, auditLog string) (*envtest.Environment, error) {
	policy := filepath.Join(tmp, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return nil, err
	}
	e := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	e.ControlPlane.GetAPIServer().Configure().
		Set("audit-policy-file", policy).
		Set("audit-log-path", auditLog).
		Set("audit-log-format", "json").
		Set("audit-log-mode", "blocking").
		Set("audit-log-maxsize", "1000000") // MiB: never rotate (the default rotates at 100 MiB and loses the figures)
	start := time.Now()
	if _, err := e.Start(); err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	logf("control plane up in %.1fs", time.Since(start).Seconds())
	return e, nil
}

func createNodes(ctx context.Context, c client.Client, n, groups int) ([]string, error) {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("bench-node-%05d", i)
	}
	work := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := names[i]
				node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: nodeLabels(i, groups)}}
				// What a kubelet reports, matching the simulated agent's facts (nodes alike to
				// the kubelet can start with a driver their first node proved).
				node.Spec.ProviderID = fmt.Sprintf("aws:///bench/i-%05d", i)
				node.Status.NodeInfo = corev1.NodeSystemInfo{KernelVersion: nodeKernel(i), OSImage: "Debian GNU/Linux 12 (bookworm)", Architecture: "amd64"}
				if err := c.Create(ctx, node); err != nil && !apierrors.IsAlreadyExists(err) {
					errs <- fmt.Errorf("create node %s: %w", name, err)
				}
			}
		}()
	}
	for i := range names {
		select {
		case work <- i:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return names, ctx.Err()
}
