package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/driverpilot/driverpilot/agent"
	"github.com/driverpilot/driverpilot/agent/probe"
	"github.com/driverpilot/driverpilot/agent/sensor"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/heartbeat"
	"github.com/driverpilot/driverpilot/internal/testenv"
	"github.com/driverpilot/driverpilot/internal/version"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// fixture is a probe fixture tree; its boot ID is fixtureBoot.
const (
	fixture     = "probe/testdata/aks-ubuntu-22.04"
	fixtureBoot = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
)

// stubSensor records the drivers it was started with, and the sensor kinds the agent built it
// for, and never reports an event.
type stubSensor struct {
	mu      sync.Mutex
	started []v1alpha1.Driver
	built   []v1alpha1.SensorKind
}

func (s *stubSensor) build(spec v1alpha1.NodeSensorSpec) (sensor.Sensor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.built = append(s.built, spec.Sensor.Kind)
	return s, nil
}

func (s *stubSensor) kinds() []v1alpha1.SensorKind {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]v1alpha1.SensorKind(nil), s.built...)
}

func (s *stubSensor) Start(d v1alpha1.Driver) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.started = append(s.started, d)
	return nil
}

func (s *stubSensor) Subscribe() (<-chan sensor.Event, func()) {
	ch := make(chan sensor.Event)
	return ch, func() {}
}

func (s *stubSensor) Close() error { return nil }

func (s *stubSensor) starts() []v1alpha1.Driver {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]v1alpha1.Driver(nil), s.started...)
}

// provenByOldAgent creates a NodeSensor whose current attempt passed under agent 0.0.1-old.
func provenByOldAgent(t *testing.T, name, bootID string) *v1alpha1.NodeSensor {
	t.Helper()
	return provenBy(t, name, bootID, "0.0.1-old")
}

// provenBy creates a NodeSensor whose current attempt passed under agent agentVersion, in the
// boot bootID, which its probe shows too.
func provenBy(t *testing.T, name, bootID, agentVersion string) *v1alpha1.NodeSensor {
	t.Helper()
	ctx := context.Background()
	ns := &v1alpha1.NodeSensor{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.NodeSensorSpec{Profile: "upgrade", Driver: v1alpha1.DriverModernEBPF, Attempt: 3,
			Sensor:   v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin},
			SelfTest: v1alpha1.SelfTestSpec{Checks: []v1alpha1.CheckName{v1alpha1.CheckExeUpperLayer}, Timeout: &metav1.Duration{Duration: time.Second}}},
	}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, ns) })
	now := metav1.Now()
	u := v1alpha1.BoolFact{Answer: v1alpha1.AnswerUnknown}
	ns.Status.Probe = &v1alpha1.ProbeFacts{Kernel: v1alpha1.KernelFacts{BootID: v1alpha1.StringFact{Value: bootID}},
		BTF: v1alpha1.BTFFacts{Vmlinux: u}, EBPF: v1alpha1.EBPFFacts{TPBTF: u, RawTracepoint: u, RingBuffer: u},
		Modules: v1alpha1.ModuleFacts{Supported: u, Disabled: u}, SecureBoot: u, Overlayfs: u}
	ns.Status.AgentVersion = agentVersion
	ns.Status.SelfTest = &v1alpha1.SelfTestStatus{Driver: v1alpha1.DriverModernEBPF, Attempt: 3, Result: v1alpha1.SelfTestPassed,
		BootID: bootID, AgentVersion: agentVersion, StartTime: &now, FinishTime: &now,
		Checks: []v1alpha1.CheckResult{{Name: v1alpha1.CheckExeUpperLayer, Result: v1alpha1.SelfTestPassed}}}
	if err := env.Client.Status().Update(ctx, ns); err != nil {
		t.Fatal(err)
	}
	return ns
}

func runAgent(t *testing.T, node, root string, s *stubSensor, opts ...func(*agent.Options)) {
	t.Helper()
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	o := agent.Options{
		NodeName: node, Client: c, Prober: &probe.Prober{Root: root, AbilitiesUnavailable: "test"},
		NewSensor: s.build,
		WorkDir:   t.TempDir(), HeartbeatInterval: 200 * time.Millisecond, Log: logr.Discard(),
	}
	for _, set := range opts {
		set(&o)
	}
	a := agent.New(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

// TestUpgradeKeepsTheOldProof: a new agent finds its node proven by the previous agent version in
// this boot. It starts the sensor with the proven driver without testing again (the manager
// paces re-verification), and tests once the manager asks with a new attempt.
func TestUpgradeKeepsTheOldProof(t *testing.T) {
	testenv.Require(t)
	ns := provenByOldAgent(t, "keep-proof", fixtureBoot)
	s := &stubSensor{}
	runAgent(t, "keep-proof", fixture, s)
	waitFor(t, "sensor started on the old proof", func() error {
		if got := s.starts(); len(got) != 1 || got[0] != v1alpha1.DriverModernEBPF {
			return fmt.Errorf("sensor starts %v", got)
		}
		return nil
	})
	time.Sleep(time.Second) // longer than the self-test timeout: a test would have reported by now
	got := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(ns), got); err != nil {
		t.Fatal(err)
	}
	if st := got.Status.SelfTest; st.AgentVersion != "0.0.1-old" || st.Result != v1alpha1.SelfTestPassed || st.Attempt != 3 {
		t.Errorf("the new agent replaced the old proof before the manager asked: %+v", st)
	}
	if got.Status.AgentVersion != version.Version {
		t.Errorf("the new agent does not report its version: %q", got.Status.AgentVersion)
	}
	// The manager asks for re-verification under an edited profile (another sensor): the new
	// agent answers attempt 4 itself, with a sensor built for the new spec.
	// The agent writes its status meanwhile (heartbeats, sensor health): retry on conflict, as
	// the manager does.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(ns), got); err != nil {
			return err
		}
		got.Spec.Attempt = 4
		got.Spec.Sensor = v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falcosecurity/falco:0.42.1"}
		return env.Client.Update(context.Background(), got)
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "re-verified by the new agent", func() error {
		cur := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(ns), cur); err != nil {
			return err
		}
		if st := cur.Status.SelfTest; st == nil || st.Attempt != 4 || st.AgentVersion != version.Version {
			return fmt.Errorf("self-test %+v", st)
		}
		return nil
	})
	if kinds := s.kinds(); len(kinds) != 2 || kinds[1] != v1alpha1.SensorFalco {
		t.Errorf("sensors built for %v: the new attempt reused the Builtin sensor for a Falco spec", kinds)
	}
}

// TestUpgradeDoesNotKeepAProofWithoutBootID: an old proof with no boot ID, on a node whose boot
// ID cannot be read either, proves nothing about this boot; the new agent tests again at once.
func TestUpgradeDoesNotKeepAProofWithoutBootID(t *testing.T) {
	testenv.Require(t)
	ns := provenByOldAgent(t, "no-boot-proof", "")
	runAgent(t, "no-boot-proof", t.TempDir(), &stubSensor{})
	waitFor(t, "tested again", func() error {
		cur := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(ns), cur); err != nil {
			return err
		}
		if st := cur.Status.SelfTest; st == nil || st.AgentVersion != version.Version || st.Attempt != 3 {
			return fmt.Errorf("self-test %+v", st)
		}
		return nil
	})
}

// TestHeartbeatsRenewTheLease: an idle agent renews its node's Lease, not its NodeSensor; where
// the Lease cannot be written (here: its namespace does not exist) it falls back to the status.
func TestHeartbeatsRenewTheLease(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	const leaseNS = "agent-heartbeats"
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: leaseNS}}); err != nil {
		t.Fatal(err)
	}
	for _, node := range []string{"beats-lease", "beats-fallback"} {
		ns := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: node}, Spec: v1alpha1.NodeSensorSpec{Profile: "beats"}}
		if err := env.Client.Create(ctx, ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(ctx, ns) })
	}
	runAgent(t, "beats-lease", fixture, &stubSensor{}, func(o *agent.Options) { o.LeaseNamespace, o.Holder = leaseNS, "pod-a" })
	runAgent(t, "beats-fallback", fixture, &stubSensor{}, func(o *agent.Options) { o.LeaseNamespace = "no-such-namespace" })

	var first time.Time
	waitFor(t, "the Lease renewed twice", func() error {
		lease := &coordinationv1.Lease{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: leaseNS, Name: "beats-lease"}, lease); err != nil {
			return err
		}
		if h := lease.Spec.HolderIdentity; h == nil || *h != "pod-a" {
			return fmt.Errorf("holder %v", h)
		}
		renewed := heartbeat.RenewTime(lease)
		if first.IsZero() {
			first = renewed
		}
		if !renewed.After(first) {
			return fmt.Errorf("renewed at %v only", renewed)
		}
		return nil
	})
	ns := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "beats-lease"}, ns); err != nil {
		t.Fatal(err)
	}
	reported := ns.Status.HeartbeatTime
	if reported == nil || ns.Status.Probe == nil {
		t.Fatalf("the agent did not report its probe: %+v", ns.Status)
	}
	time.Sleep(time.Second) // five heartbeat intervals
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "beats-lease"}, ns); err != nil {
		t.Fatal(err)
	}
	if !ns.Status.HeartbeatTime.Equal(reported) {
		t.Errorf("an idle agent with a Lease rewrote its NodeSensor heartbeat (%v, then %v)", reported, ns.Status.HeartbeatTime)
	}

	var fallbackFirst *metav1.Time
	waitFor(t, "status heartbeats where the Lease is refused", func() error {
		got := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(ctx, client.ObjectKey{Name: "beats-fallback"}, got); err != nil {
			return err
		}
		hb := got.Status.HeartbeatTime
		if hb == nil {
			return fmt.Errorf("no heartbeat yet")
		}
		if fallbackFirst == nil {
			fallbackFirst = hb
		}
		if !hb.After(fallbackFirst.Time) {
			return fmt.Errorf("heartbeat %v not renewed", hb)
		}
		return nil
	})
}

// TestPredictedDriverReportsFactsWithTheVerdict: a NodeSensor created with a driver already
// decided (predicted from similar nodes) gets the node's facts with the first verdict, in one
// status write, not a write of the facts alone before it.
func TestPredictedDriverReportsFactsWithTheVerdict(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	const node = "predicted"
	ns := &v1alpha1.NodeSensor{
		ObjectMeta: metav1.ObjectMeta{Name: node},
		Spec: v1alpha1.NodeSensorSpec{Profile: "predicted", Driver: v1alpha1.DriverModernEBPF, Attempt: 1,
			Sensor:   v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin},
			SelfTest: v1alpha1.SelfTestSpec{Checks: []v1alpha1.CheckName{v1alpha1.CheckExeUpperLayer}, Timeout: &metav1.Duration{Duration: time.Second}}},
	}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, ns) })
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	// Watching from before the agent starts sees every write it makes.
	w, err := c.Watch(ctx, &v1alpha1.NodeSensorList{}, client.MatchingFields{"metadata.name": node})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	// A long heartbeat interval: no status heartbeat (there is no Lease) among the writes counted.
	runAgent(t, node, fixture, &stubSensor{}, func(o *agent.Options) { o.HeartbeatInterval = time.Minute })

	writes := 0
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("watch closed after %d writes", writes)
			}
			got, isNS := ev.Object.(*v1alpha1.NodeSensor)
			if !isNS || ev.Type != watch.Modified {
				continue
			}
			writes++
			if got.Status.SelfTest == nil {
				continue
			}
			if writes != 1 {
				t.Errorf("%d status writes up to the verdict, want 1 (the facts with the verdict)", writes)
			}
			if p := got.Status.Probe; p == nil || p.Kernel.BootID.Value != fixtureBoot {
				t.Errorf("the verdict came without the node's facts: probe %+v", p)
			}
			if st := got.Status.SelfTest; st.Attempt != 1 || st.Driver != v1alpha1.DriverModernEBPF || st.AgentVersion != version.Version {
				t.Errorf("self-test %+v, want attempt 1 of %s", st, v1alpha1.DriverModernEBPF)
			}
			return
		case <-timeout:
			t.Fatalf("no verdict within 30s (%d status writes)", writes)
		}
	}
}

// TestStatusReportDefersTheLeaseRenewal: a status report is a heartbeat (the manager takes the
// later of it and the Lease), so the agent renews its Lease an interval after the report, not on
// the Lease's own schedule.
func TestStatusReportDefersTheLeaseRenewal(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	const (
		leaseNS  = "agent-report-beats"
		node     = "report-beats"
		interval = 1500 * time.Millisecond
	)
	// Namespaces outlive envtest runs of this test (-count): no namespace controller deletes them.
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: leaseNS}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	ns := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: node}, Spec: v1alpha1.NodeSensorSpec{Profile: "report-beats"}}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, ns) })
	// No sensor can be built: a decision gets its (failed) verdict reported at once.
	runAgent(t, node, fixture, &stubSensor{}, func(o *agent.Options) {
		o.LeaseNamespace, o.HeartbeatInterval = leaseNS, interval
		o.NewSensor = func(v1alpha1.NodeSensorSpec) (sensor.Sensor, error) { return nil, errors.New("no sensor in this test") }
	})
	renewed := func() (time.Time, error) {
		lease := &coordinationv1.Lease{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: leaseNS, Name: node}, lease); err != nil {
			return time.Time{}, err
		}
		return heartbeat.RenewTime(lease), nil
	}
	after := func(what string, t0 time.Time) time.Time {
		t.Helper()
		var r time.Time
		waitFor(t, what, func() error {
			var err error
			if r, err = renewed(); err != nil {
				return err
			}
			if !r.After(t0) {
				return fmt.Errorf("renewed at %v", r)
			}
			return nil
		})
		return r
	}

	// Decide right after a renewal: on the Lease's own schedule the next one would come an
	// interval after that renewal, so before an interval after the report.
	first := after("the Lease created", time.Time{})
	last := after("the Lease renewed", first)
	decided := time.Now()
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		got := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(ns), got); err != nil {
			return err
		}
		got.Spec.Driver, got.Spec.Attempt = v1alpha1.DriverModernEBPF, 1
		return env.Client.Update(ctx, got)
	}); err != nil {
		t.Fatal(err)
	}
	var reported *metav1.Time
	waitFor(t, "the verdict reported", func() error {
		got := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(ns), got); err != nil {
			return err
		}
		if st := got.Status.SelfTest; st == nil || st.Attempt != 1 {
			return fmt.Errorf("self-test %+v", st)
		}
		reported = got.Status.HeartbeatTime
		return nil
	})
	seen := time.Now()
	// A renewal that had begun before the report landed may show after it; one that starts after
	// the report was seen must wait an interval from the report, made after decided.
	next := after("the Lease renewed after the report", seen)
	t.Logf("renewed %v, decided %v later, report (heartbeatTime %v) seen %v after the decision, next renewal %v after the decision",
		last.Format(time.StampMicro), decided.Sub(last), reported.Format(time.RFC3339), seen.Sub(decided), next.Sub(decided))
	if next.Before(decided.Add(interval)) {
		t.Errorf("Lease renewed %v after the decision, before an interval (%v) had passed since the verdict report", next.Sub(decided), interval)
	}
	if next.Before(reported.Add(interval)) {
		t.Errorf("Lease renewed at %v, before an interval after the report's heartbeatTime %v", next, reported)
	}
}

// slowSensor is a stubSensor whose Start blocks until release is closed (10s at most), so a
// self-test lasts as long as the test wants; started receives when a Start begins.
type slowSensor struct {
	*stubSensor
	started chan struct{}
	release chan struct{}
}

func (s *slowSensor) build(spec v1alpha1.NodeSensorSpec) (sensor.Sensor, error) {
	_, _ = s.stubSensor.build(spec)
	return s, nil
}

func (s *slowSensor) Start(d v1alpha1.Driver) error {
	select {
	case s.started <- struct{}{}:
	default:
	}
	select {
	case <-s.release:
	case <-time.After(10 * time.Second):
	}
	return s.stubSensor.Start(d)
}

// bootRoot is a probe root whose only fact is the boot ID.
func bootRoot(t *testing.T, bootID string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "proc/sys/kernel/random")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "boot_id"), []byte(bootID+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestRebootReportsFactsBeforeTheSelfTest: after a reboot the NodeSensor still holds the previous
// boot's probe and pass. The manager tells a proof of this boot by the probe's boot ID, so the new
// facts must land before the self-test runs, not ride with its verdict: until then the node stays
// verified on the previous boot's proof.
func TestRebootReportsFactsBeforeTheSelfTest(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	const node = "rebooted"
	ns := provenBy(t, node, "old-boot", version.Version)
	s := &slowSensor{stubSensor: &stubSensor{}, started: make(chan struct{}, 1), release: make(chan struct{})}
	var once sync.Once
	release := func() { once.Do(func() { close(s.release) }) }
	defer release() // before runAgent's cleanup waits for the agent
	runAgent(t, node, bootRoot(t, "new-boot"), s.stubSensor, func(o *agent.Options) { o.NewSensor = s.build })

	select {
	case <-s.started:
	case <-time.After(20 * time.Second):
		t.Fatal("the self-test did not start within 20s")
	}
	// The self-test is blocked: whatever the NodeSensor shows now, it shows during the whole test.
	got := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(ns), got); err != nil {
		t.Fatal(err)
	}
	if st := got.Status.SelfTest; st == nil || st.BootID != "old-boot" {
		t.Fatalf("a new verdict while the self-test is blocked: %+v", st)
	}
	if p := got.Status.Probe; p == nil || p.Kernel.BootID.Value != "new-boot" {
		t.Errorf("during the self-test the probe shows boot %q, not new-boot: the previous boot's pass keeps the node verified", probeBoot(p))
	}
	release()
	waitFor(t, "the new verdict", func() error {
		cur := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(ns), cur); err != nil {
			return err
		}
		if st := cur.Status.SelfTest; st == nil || st.BootID == "old-boot" {
			return fmt.Errorf("self-test %+v", st)
		}
		if p := cur.Status.Probe; p == nil || p.Kernel.BootID.Value != "new-boot" {
			return fmt.Errorf("probe boot %q", probeBoot(p))
		}
		return nil
	})
}

// probeBoot is the boot ID a probe shows ("" for none).
func probeBoot(p *v1alpha1.ProbeFacts) string {
	if p == nil {
		return ""
	}
	return p.Kernel.BootID.Value
}

// countingClient counts the GETs of one NodeSensor.
type countingClient struct {
	client.WithWatch
	name string
	gets atomic.Int32
}

func (c *countingClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, isNS := obj.(*v1alpha1.NodeSensor); isNS && key.Name == c.name {
		c.gets.Add(1)
	}
	return c.WithWatch.Get(ctx, key, obj, opts...)
}

// TestWaitsForTheNodeSensorWithoutPolling: the manager may hold a node's NodeSensor back for
// minutes; its agent watches for it instead of polling (thousands of waiting agents would load
// the API server), and still reports its facts promptly once it is created.
func TestWaitsForTheNodeSensorWithoutPolling(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	const node = "held-back"
	var counter *countingClient
	runAgent(t, node, fixture, &stubSensor{}, func(o *agent.Options) {
		counter = &countingClient{WithWatch: o.Client, name: node}
		o.Client = counter
	})
	time.Sleep(3 * time.Second)
	if n := counter.gets.Load(); n > 3 {
		t.Errorf("%d GETs of the NodeSensor in a 3s wait: the agent polls", n)
	}
	ns := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: node}, Spec: v1alpha1.NodeSensorSpec{Profile: "held-back"}}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, ns) })
	created := time.Now()
	waitFor(t, "the facts reported", func() error {
		got := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(ns), got); err != nil {
			return err
		}
		if p := got.Status.Probe; p == nil || p.Kernel.BootID.Value != fixtureBoot {
			return fmt.Errorf("probe %+v", p)
		}
		return nil
	})
	if d := time.Since(created); d > 3*time.Second {
		t.Errorf("facts reported %v after the NodeSensor was created, want within 3s", d)
	}
}

// TestWaitForTheNodeSensorEndsWithTheContext: an agent waiting (watching) for a NodeSensor that
// never comes returns promptly when its context ends.
func TestWaitForTheNodeSensorEndsWithTheContext(t *testing.T) {
	testenv.Require(t)
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	a := agent.New(agent.Options{NodeName: "never-created", Client: c, Prober: &probe.Prober{Root: fixture, AbilitiesUnavailable: "test"},
		NewSensor: (&stubSensor{}).build, WorkDir: t.TempDir(), Log: logr.Discard()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	time.Sleep(500 * time.Millisecond) // waiting on the watch by now
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want the context's error", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run still waiting 2s after its context ended")
	}
}

// TestWaitForDecision: the init step of a Falco pod reports the facts of an undecided node and
// returns the driver once decided. On a node whose driver was predicted before any probe it
// reports the facts too before it returns: if Falco or its driver loader then fails, the sidecar
// may never report, and the manager checks the prediction against those facts.
func TestWaitForDecision(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	wait := func(node string) <-chan v1alpha1.NodeSensorSpec {
		a := agent.New(agent.Options{NodeName: node, Client: c, Prober: &probe.Prober{Root: fixture, AbilitiesUnavailable: "test"},
			HeartbeatInterval: time.Minute, Log: logr.Discard()})
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out := make(chan v1alpha1.NodeSensorSpec, 1)
		go func() {
			defer cancel()
			spec, err := a.WaitForDecision(ctx)
			if err != nil {
				t.Errorf("%s: %v", node, err)
			}
			out <- spec
		}()
		return out
	}
	create := func(node string, driver v1alpha1.Driver) *v1alpha1.NodeSensor {
		ns := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: node},
			Spec: v1alpha1.NodeSensorSpec{Profile: "decide", Driver: driver, Sensor: v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falco:0.39.0"}}}
		if driver != "" {
			ns.Spec.Attempt = 1
		}
		if err := env.Client.Create(ctx, ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(ctx, ns) })
		return ns
	}

	undecided := create("decide-undecided", "")
	got := wait(undecided.Name)
	waitFor(t, "the facts of the undecided node", func() error {
		cur := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(undecided), cur); err != nil {
			return err
		}
		if p := cur.Status.Probe; p == nil || p.Kernel.BootID.Value != fixtureBoot {
			return fmt.Errorf("probe %+v", p)
		}
		base := cur.DeepCopy()
		cur.Spec.Driver, cur.Spec.Attempt = v1alpha1.DriverKmod, 1
		return env.Client.Patch(ctx, cur, client.MergeFrom(base))
	})
	if spec := <-got; spec.Driver != v1alpha1.DriverKmod || spec.Attempt != 1 {
		t.Errorf("decided %s attempt %d, want kmod attempt 1", spec.Driver, spec.Attempt)
	}

	predicted := create("decide-predicted", v1alpha1.DriverModernEBPF)
	if spec := <-wait(predicted.Name); spec.Driver != v1alpha1.DriverModernEBPF {
		t.Errorf("predicted node: driver %q, want %s", spec.Driver, v1alpha1.DriverModernEBPF)
	}
	cur := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(predicted), cur); err != nil {
		t.Fatal(err)
	}
	if p := cur.Status.Probe; p == nil || p.Kernel.BootID.Value != fixtureBoot {
		t.Errorf("the predicted node's init step returned without its facts: %+v", cur.Status)
	}
}
