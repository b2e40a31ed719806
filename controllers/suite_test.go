package controllers_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/controllers"
	"github.com/driverpilot/driverpilot/internal/heartbeat"
	"github.com/driverpilot/driverpilot/internal/testenv"
)

var env *testenv.Env

// heartbeatTimeout is short so expiry tests run quickly.
const heartbeatTimeout = 3 * time.Second

// agentNamespace is the manager's namespace: its agent DaemonSets and pods.
const agentNamespace = "driverpilot-system"

// agentVersion is the agent version the manager under test deploys.
const agentVersion = "0.2.0"

func TestMain(m *testing.M) { testenv.Main(m, &env, startManager) }

func startManager(e *testenv.Env) (func(), error) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(false)))
	mgr, err := ctrl.NewManager(e.Config, ctrl.Options{Scheme: e.Scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: controllers.CacheOptions(agentNamespace)})
	if err != nil {
		return nil, err
	}
	issues, err := knownissues.Default()
	if err != nil {
		return nil, err
	}
	r := &controllers.SecurityProfileReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: mgr.GetScheme(), Recorder: mgr.GetEventRecorder("driverpilot-test"),
		KnownIssues: issues, HeartbeatTimeout: heartbeatTimeout, AgentVersion: agentVersion,
		Agent: controllers.AgentConfig{Namespace: agentNamespace, Image: "driverpilot:test", ServiceAccount: "driverpilot-agent"},
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return nil, err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: agentNamespace}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Println("manager:", err)
		}
	}()
	return func() { cancel(); <-done }, nil
}

// eventually polls cond until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not reached within %s: %v", what, timeout, err)
}

// createNodes creates nodes labelled for one test and removes them afterwards.
func createNodes(t *testing.T, testLabel string, names ...string) {
	t.Helper()
	createNodesWith(t, testLabel, names, nil, 1)
}

// createNodesFast creates many nodes in parallel, labelled for one test, and removes them after.
// info, when set, gives each node the kernel, OS image and architecture its kubelet reports.
func createNodesFast(t *testing.T, testLabel string, names []string, info func(name string) corev1.NodeSystemInfo) {
	t.Helper()
	createNodesWith(t, testLabel, names, info, 16)
}

// createNodesWith creates the nodes, parallel at once (1: in order), and removes them after.
func createNodesWith(t *testing.T, testLabel string, names []string, info func(name string) corev1.NodeSystemInfo, parallel int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	sem := make(chan struct{}, parallel)
	for _, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"test": testLabel}}}
			if info != nil {
				n.Status.NodeInfo = info(name)
			}
			if err := env.Client.Create(context.Background(), n); err != nil {
				errs <- fmt.Errorf("create node %s: %w", name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	t.Cleanup(func() {
		for _, name := range names {
			_ = env.Client.Delete(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}})
		}
	})
	for err := range errs {
		t.Fatal(err)
	}
}

func createProfile(t *testing.T, p *v1alpha1.SecurityProfile) {
	t.Helper()
	if err := env.Client.Create(context.Background(), p); err != nil {
		t.Fatalf("create profile %s: %v", p.Name, err)
	}
	t.Cleanup(func() {
		_ = env.Client.Delete(context.Background(), p)
		// Wait for the finalizer so the next test starts from a clean API.
		eventually(t, 10*time.Second, "profile "+p.Name+" gone", func() error {
			err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(p), &v1alpha1.SecurityProfile{})
			if err == nil {
				return fmt.Errorf("still there")
			}
			return client.IgnoreNotFound(err)
		})
	})
}

func selectorFor(testLabel string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{"test": testLabel}}
}

// typicalFacts are those of a node where every driver can work (modules allowed, no lockdown).
func typicalFacts(bootID string) *v1alpha1.ProbeFacts { return factsOn(bootID, "6.1.0-28-cloud-amd64") }

// factsOn are typicalFacts on another kernel release.
func factsOn(bootID, release string) *v1alpha1.ProbeFacts {
	yes := v1alpha1.BoolFact{Answer: v1alpha1.AnswerYes, Source: "test"}
	no := v1alpha1.BoolFact{Answer: v1alpha1.AnswerNo, Source: "test"}
	s := func(v string) v1alpha1.StringFact { return v1alpha1.StringFact{Value: v, Source: "test"} }
	return &v1alpha1.ProbeFacts{
		Kernel:     v1alpha1.KernelFacts{Release: s(release), Version: s("6.1.119"), Architecture: s("amd64"), BootID: s(bootID)},
		BTF:        v1alpha1.BTFFacts{Vmlinux: yes, OverlayTypes: s(v1alpha1.OverlayTypesModule)},
		EBPF:       v1alpha1.EBPFFacts{TPBTF: yes, RawTracepoint: yes, RingBuffer: yes},
		Lockdown:   s("none"),
		Modules:    v1alpha1.ModuleFacts{Supported: yes, Disabled: no},
		SecureBoot: no,
		Overlayfs:  yes,
		Distro:     v1alpha1.DistroFacts{ID: "debian", VersionID: "12", Source: "test"},
		Cloud:      s("aws"),
	}
}

// fakeAgent plays a node's agent at the API, writing exactly what the real agent writes: the
// probe, heartbeats, and a self-test verdict for each new attempt (after delay).
type fakeAgent struct {
	node    string
	delay   time.Duration
	verdict func(d v1alpha1.Driver) v1alpha1.SelfTestResult
	bootID  string

	mu        sync.Mutex
	heartbeat bool
	// lease sends heartbeats to the node's Lease, as the real agent does; the status keeps the
	// heartbeat of each report.
	lease   bool
	version string
	// rebooted holds the facts of a new boot, written on the next pass.
	rebooted *v1alpha1.ProbeFacts
	// sensorKind is the sensor this agent's pod runs; a spec naming another one gets
	// SensorUnavailable, as from the real agent. Empty serves any.
	sensorKind v1alpha1.SensorKind
	// restarted makes the agent test the current attempt again, as a new pod does.
	restarted bool
	// tamper, when set, rewrites each verdict before it is written (a hostile agent).
	tamper func(*v1alpha1.SelfTestStatus)
	// gone is set while the node has no running agent (its pod terminating or not started yet).
	gone bool
}

// stop plays the agent's pod going away: the agent writes nothing until restart.
func (a *fakeAgent) stop() { a.mu.Lock(); a.gone = true; a.mu.Unlock() }

// restart plays the DaemonSet replacing this agent's pod with one running sensor kind.
func (a *fakeAgent) restart(kind v1alpha1.SensorKind) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sensorKind, a.restarted, a.gone = kind, true, false
}

// reboot plays the node rebooting into another kernel: the agent starts again, reports the new
// facts, and from then on answers with verdict.
func (a *fakeAgent) reboot(release string, verdict func(v1alpha1.Driver) v1alpha1.SelfTestResult) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.bootID += "-rebooted"
	a.rebooted = factsOn(a.bootID, release)
	a.verdict = verdict
}

func startAgents(t *testing.T, delay time.Duration, verdict func(v1alpha1.Driver) v1alpha1.SelfTestResult, nodes ...string) map[string]*fakeAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	agents := map[string]*fakeAgent{}
	for _, n := range nodes {
		a := &fakeAgent{node: n, delay: delay, verdict: verdict, bootID: "boot-" + n, heartbeat: true, version: agentVersion}
		agents[n] = a
		wg.Add(1)
		go func() { defer wg.Done(); a.run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return agents
}

func (a *fakeAgent) stopHeartbeat() { a.setHeartbeat(false) }

func (a *fakeAgent) setHeartbeat(on bool) { a.mu.Lock(); a.heartbeat = on; a.mu.Unlock() }

// useLease makes the agent renew its node's heartbeat Lease instead of its status heartbeat.
func (a *fakeAgent) useLease() { a.mu.Lock(); a.lease = true; a.mu.Unlock() }

// upgrade plays the DaemonSet replacing this node's agent with another version. Like the real
// agent, the new one keeps a passed verdict of an older version until a new attempt comes.
func (a *fakeAgent) upgrade(version string) { a.mu.Lock(); a.version = version; a.mu.Unlock() }

func (a *fakeAgent) run(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastBeat := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		a.mu.Lock()
		gone := a.gone
		a.mu.Unlock()
		if gone {
			continue
		}
		ns := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(ctx, client.ObjectKey{Name: a.node}, ns); err != nil {
			continue
		}
		base := ns.DeepCopy()
		a.mu.Lock()
		version, rebooted, verdict, bootID := a.version, a.rebooted, a.verdict, a.bootID
		kind, restarted, tamper := a.sensorKind, a.restarted, a.tamper
		a.rebooted, a.restarted = nil, false
		a.mu.Unlock()
		changed := ns.Status.AgentVersion != version
		ns.Status.AgentVersion = version
		if ns.Status.Probe == nil {
			ns.Status.Probe = typicalFacts(bootID)
			changed = true
		}
		if rebooted != nil {
			ns.Status.Probe = rebooted
			changed = true
		}
		spec := ns.Spec
		if spec.Driver != "" && (restarted || ns.Status.SelfTest == nil || ns.Status.SelfTest.Attempt != spec.Attempt) {
			time.Sleep(a.delay)
			start := metav1.NewTime(time.Now().Add(-a.delay))
			finish := metav1.Now()
			result := verdict(spec.Driver)
			st := &v1alpha1.SelfTestStatus{
				Driver: spec.Driver, Attempt: spec.Attempt, Result: result, BootID: bootID, AgentVersion: version,
				StartTime: &start, FinishTime: &finish,
			}
			// Like the real agent: one result per check the spec asks for.
			for _, c := range spec.SelfTest.Checks {
				st.Checks = append(st.Checks, v1alpha1.CheckResult{Name: c, Result: result, Expected: "as the check says"})
			}
			if result != v1alpha1.SelfTestPassed {
				st.Reason, st.Message = "CheckTimedOut", "ExeUpperLayer: no event within 5s"
			}
			if kind != "" && spec.Sensor.Kind != kind {
				st.Result, st.Checks = v1alpha1.SelfTestFailed, nil
				st.Reason, st.Message = v1alpha1.ReasonSensorUnavailable, "sensor kind "+string(spec.Sensor.Kind)+": this agent runs "+string(kind)
			}
			if tamper != nil {
				tamper(st)
			}
			ns.Status.SelfTest = st
			changed = true
		}
		a.mu.Lock()
		beat, lease := a.heartbeat, a.lease
		a.mu.Unlock()
		if beat && lease && time.Since(lastBeat) > 500*time.Millisecond {
			if err := heartbeat.Renew(ctx, env.Client, agentNamespace, a.node, "fake-"+a.node, time.Now()); err == nil {
				lastBeat = time.Now()
			}
		}
		if changed && lease {
			now := metav1.Now() // a report carries its heartbeat, as the real agent's does
			ns.Status.HeartbeatTime = &now
		}
		if beat && !lease && (changed || time.Since(lastBeat) > 500*time.Millisecond) {
			now := metav1.Now()
			ns.Status.HeartbeatTime = &now
			changed = true
			lastBeat = time.Now()
		}
		if changed {
			_ = env.Client.Status().Patch(ctx, ns, client.MergeFrom(base))
		}
	}
}

func always(r v1alpha1.SelfTestResult) func(v1alpha1.Driver) v1alpha1.SelfTestResult {
	return func(v1alpha1.Driver) v1alpha1.SelfTestResult { return r }
}

func nodeCondition(t *testing.T, name string) *corev1.NodeCondition {
	t.Helper()
	n := &corev1.Node{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, n); err != nil {
		t.Fatalf("get node %s: %v", name, err)
	}
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == v1alpha1.NodeConditionRuntimeSecurityReady {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

func conditionIs(t *testing.T, node string, status corev1.ConditionStatus, reason string) func() error {
	return func() error {
		c := nodeCondition(t, node)
		if c == nil {
			return fmt.Errorf("node %s has no %s condition", node, v1alpha1.NodeConditionRuntimeSecurityReady)
		}
		if c.Status != status || c.Reason != reason {
			return fmt.Errorf("node %s condition is %s/%s (%s), want %s/%s", node, c.Status, c.Reason, c.Message, status, reason)
		}
		return nil
	}
}
