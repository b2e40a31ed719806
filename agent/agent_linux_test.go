package agent_test

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/driverpilot/driverpilot/agent"
	"github.com/driverpilot/driverpilot/agent/probe"
	"github.com/driverpilot/driverpilot/agent/sensor"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/testenv"
	"github.com/driverpilot/driverpilot/internal/testutil"
)

// killSwitch is an alert output that panics while armed: a real way for the built-in sensor's
// reader goroutine to die (it recovers, records the panic and stops reading).
type killSwitch struct{ armed atomic.Bool }

func (k *killSwitch) Write(p []byte) (int, error) {
	if k.armed.Load() {
		panic("alert output killed by the test")
	}
	return len(p), nil
}

// createNodeSensor creates the NodeSensor of node with a decided driver (attempt 1), as the
// manager would, and returns a client for the agent; the object goes away with the test.
func createNodeSensor(t *testing.T, node string, d v1alpha1.Driver, timeout time.Duration, checks ...v1alpha1.CheckName) client.WithWatch {
	t.Helper()
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	ns := &v1alpha1.NodeSensor{
		ObjectMeta: metav1.ObjectMeta{Name: node},
		Spec: v1alpha1.NodeSensorSpec{Profile: "p", Driver: d, Attempt: 1,
			SelfTest: v1alpha1.SelfTestSpec{Checks: checks, Timeout: &metav1.Duration{Duration: timeout}}},
	}
	if err := c.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), ns) })
	return c
}

// runAgent runs an agent for node with the test's own settings in o, against the test control
// plane, until the test ends.
func runRealAgent(t *testing.T, node string, c client.WithWatch, o agent.Options) {
	t.Helper()
	o.NodeName, o.Client, o.Prober, o.Log = node, c, probe.New("/"), testr.New(t)
	o.HeartbeatInterval = 2 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.New(o).Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// nodeHealth reads the node's SensorHealthy condition and last self-test.
func nodeHealth(t *testing.T, c client.Client, node string) (*metav1.Condition, *v1alpha1.SelfTestStatus) {
	t.Helper()
	got := &v1alpha1.NodeSensor{}
	if err := c.Get(context.Background(), client.ObjectKey{Name: node}, got); err != nil {
		t.Fatal(err)
	}
	return meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionSensorHealthy), got.Status.SelfTest
}

// waitHealth polls nodeHealth until ok holds and returns how long that took; it fails the test
// after limit.
func waitHealth(t *testing.T, c client.Client, node, what string, limit time.Duration, ok func(*metav1.Condition, *v1alpha1.SelfTestStatus) bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if ok(nodeHealth(t, c, node)) {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cond, st := nodeHealth(t, c, node)
	t.Fatalf("%s not seen within %s: condition %+v, self-test %+v", what, limit, cond, st)
	return 0
}

// upperExec mounts a private overlay and returns the path of a binary written through it (upper
// layer), whose exec the built-in sensor always sends and alerts on.
func upperExec(t *testing.T) string {
	t.Helper()
	merged := overlayDir(t)
	in, err := os.Open("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	exe := filepath.Join(merged, "dp-health-kill")
	out, err := os.OpenFile(exe, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return exe
}

// TestSensorHealthBetweenSelfTests kills the built-in sensor's reader after the node passed its
// self-test: the agent must report SensorHealthy=False within seconds (the manager then takes
// the node out of verified, see internal/nodestate), and True again only together with a new
// passing self-test on a fresh sensor.
func TestSensorHealthBetweenSelfTests(t *testing.T) {
	testutil.RequireKernel(t)
	testenv.Require(t)
	const node = "health-node"
	c := createNodeSensor(t, node, v1alpha1.DriverModernEBPF, 5*time.Second, v1alpha1.CheckExeUpperLayer, v1alpha1.CheckExeLowerLayer)

	kill := &killSwitch{}
	var sensors atomic.Int32
	runRealAgent(t, node, c, agent.Options{
		NewSensor: func(v1alpha1.NodeSensorSpec) (sensor.Sensor, error) {
			sensors.Add(1)
			return sensor.NewBuiltin(sensor.Options{Alerts: kill}), nil
		},
		WorkDir:        t.TempDir(),
		HealthInterval: 500 * time.Millisecond,
		RetryBackoff:   time.Second,
	})

	health := func() (*metav1.Condition, *v1alpha1.SelfTestStatus) { return nodeHealth(t, c, node) }
	waitFor := func(what string, limit time.Duration, ok func(*metav1.Condition, *v1alpha1.SelfTestStatus) bool) time.Duration {
		t.Helper()
		return waitHealth(t, c, node, what, limit, ok)
	}

	waitFor("a passing self-test with SensorHealthy=True", 90*time.Second, func(c *metav1.Condition, st *v1alpha1.SelfTestStatus) bool {
		return st != nil && st.Result == v1alpha1.SelfTestPassed && c != nil && c.Status == metav1.ConditionTrue
	})
	_, first := health()

	exe := upperExec(t)
	kill.armed.Store(true)
	if err := exec.Command(exe).Run(); err != nil {
		t.Fatalf("exec %s: %v", exe, err)
	}
	took := waitFor("SensorHealthy=False after the reader died", 10*time.Second, func(c *metav1.Condition, _ *v1alpha1.SelfTestStatus) bool {
		return c != nil && c.Status == metav1.ConditionFalse
	})
	cond, _ := health()
	t.Logf("reader killed: SensorHealthy=False (%s: %s) %s after the exec", cond.Reason, cond.Message, took.Round(time.Millisecond))
	if cond.Reason != sensor.ReasonReaderStopped {
		t.Errorf("reason %s, want %s", cond.Reason, sensor.ReasonReaderStopped)
	}

	kill.armed.Store(false)
	waitFor("SensorHealthy=True with a new passing self-test", 60*time.Second, func(c *metav1.Condition, st *v1alpha1.SelfTestStatus) bool {
		return c != nil && c.Status == metav1.ConditionTrue && st != nil && st.Result == v1alpha1.SelfTestPassed &&
			st.StartTime != nil && st.StartTime.After(first.FinishTime.Time)
	})
	if n := sensors.Load(); n < 2 {
		t.Errorf("the agent made %d sensors; a dead one must be replaced by a fresh one", n)
	}
}

// lossySensor sees nothing and, while lossy, reports a growing number of kernel drops: a busy
// node whose buffer overflows during every self-test.
type lossySensor struct {
	lossy, runs atomic.Int32
	drops       atomic.Uint64
}

func (s *lossySensor) Start(v1alpha1.Driver) error { return nil }
func (s *lossySensor) Subscribe() (<-chan sensor.Event, func()) {
	s.runs.Add(1)
	ch := make(chan sensor.Event)
	return ch, func() {}
}
func (s *lossySensor) Close() error { return nil }
func (s *lossySensor) Drops() sensor.Drops {
	if s.lossy.Load() == 1 {
		s.drops.Add(3)
	}
	return sensor.Drops{Kernel: s.drops.Load()}
}

// TestInconclusiveRunsAreRetriedNotFailed: while the sensor loses events every self-test is
// Inconclusive and the agent runs it again with backoff, never reporting Failed (which the
// manager would record against the driver); once a run is clean, its miss fails the driver.
func TestInconclusiveRunsAreRetriedNotFailed(t *testing.T) {
	testutil.RequireKernel(t)
	testenv.Require(t)
	const node = "lossy-node"
	c := createNodeSensor(t, node, v1alpha1.DriverEBPF, 200*time.Millisecond, v1alpha1.CheckExeFromMemfd)
	s := &lossySensor{}
	s.lossy.Store(1)
	runRealAgent(t, node, c, agent.Options{
		NewSensor:    func(v1alpha1.NodeSensorSpec) (sensor.Sensor, error) { return s, nil },
		WorkDir:      t.TempDir(),
		RetryBackoff: 300 * time.Millisecond,
	})

	result := func() *v1alpha1.SelfTestStatus {
		got := &v1alpha1.NodeSensor{}
		if err := c.Get(context.Background(), client.ObjectKey{Name: node}, got); err != nil {
			t.Fatal(err)
		}
		return got.Status.SelfTest
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.runs.Load() < 3 && time.Now().Before(deadline) {
		if st := result(); st != nil && st.Result == v1alpha1.SelfTestFailed {
			t.Fatalf("a run with drops was reported Failed: %s", st.Message)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := s.runs.Load(); n < 3 {
		t.Fatalf("%d self-test runs in 30s; an inconclusive run must be retried", n)
	}
	if st := result(); st == nil || st.Result != v1alpha1.SelfTestInconclusive || st.Reason != "EventsDropped" {
		t.Fatalf("self-test %+v, want Inconclusive EventsDropped", st)
	}

	s.lossy.Store(0)
	deadline = time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if st := result(); st != nil && st.Result == v1alpha1.SelfTestFailed {
			t.Logf("clean run: %s %s", st.Result, st.Reason)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("a clean run that saw nothing did not fail the driver: %+v", result())
}

// allExecs is the built-in sensor standing in for Falco: it claims to report every exec (its
// liveness execs run on an overlay, where the built-in sensor sees them) and, while cut, drops
// the liveness events the way a Falco with a broken alert output would.
type allExecs struct {
	*sensor.Builtin
	cut *atomic.Bool
}

func (s allExecs) ReportsAllExecs() bool { return true }

func (s allExecs) Subscribe() (<-chan sensor.Event, func()) {
	in, unsubscribe := s.Builtin.Subscribe()
	out := make(chan sensor.Event, 1024)
	go func() {
		defer close(out)
		for ev := range in {
			if s.cut.Load() && strings.HasPrefix(ev.Filename, "dp-alive-") {
				continue
			}
			out <- ev
		}
	}()
	return out, unsubscribe
}

// overlayDir mounts a private overlay and returns its merged directory: files written there are
// upper-layer files.
func overlayDir(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	merged := filepath.Join(base, "merged")
	opts := "lowerdir=" + base + "/lower,upperdir=" + base + "/upper,workdir=" + base + "/work"
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(merged, unix.MNT_DETACH) })
	return merged
}

// TestAlertFlowBetweenSelfTests: a sensor that reports every exec (Falco) is proven between
// self-tests by the agent's own liveness exec; when its events stop reaching the agent (a broken
// alert output: Falco healthy, nothing delivered) the node leaves verified within seconds
// (SensorHealthy=False, AlertFlowStopped), and comes back with a new passing self-test.
func TestAlertFlowBetweenSelfTests(t *testing.T) {
	testutil.RequireKernel(t)
	testenv.Require(t)
	const node = "flow-node"
	c := createNodeSensor(t, node, v1alpha1.DriverModernEBPF, 5*time.Second, v1alpha1.CheckExeUpperLayer)
	var cut atomic.Bool
	runRealAgent(t, node, c, agent.Options{
		NewSensor: func(v1alpha1.NodeSensorSpec) (sensor.Sensor, error) {
			return allExecs{Builtin: sensor.NewBuiltin(sensor.Options{}), cut: &cut}, nil
		},
		WorkDir:           overlayDir(t),
		HealthInterval:    300 * time.Millisecond,
		AlertFlowInterval: time.Second,
		AlertFlowTimeout:  time.Second,
		RetryBackoff:      time.Second,
	})

	condition := func() *metav1.Condition { c, _ := nodeHealth(t, c, node); return c }
	waitFor := func(what string, limit time.Duration, status metav1.ConditionStatus) time.Duration {
		t.Helper()
		return waitHealth(t, c, node, what, limit, func(c *metav1.Condition, _ *v1alpha1.SelfTestStatus) bool {
			return c != nil && c.Status == status
		})
	}
	waitFor("SensorHealthy=True after the self-test", 60*time.Second, metav1.ConditionTrue)
	time.Sleep(3 * time.Second) // several liveness execs answered: still healthy
	if c := condition(); c.Status != metav1.ConditionTrue {
		t.Fatalf("healthy flow reported unhealthy: %+v", c)
	}
	cut.Store(true)
	took := waitFor("SensorHealthy=False after the alert flow stopped", 15*time.Second, metav1.ConditionFalse)
	t.Logf("alert flow cut: SensorHealthy=False (%s) after %s", condition().Reason, took.Round(time.Millisecond))
	if r := condition().Reason; r != agent.ReasonAlertFlowStopped {
		t.Errorf("reason %s, want %s", r, agent.ReasonAlertFlowStopped)
	}
	cut.Store(false)
	waitFor("SensorHealthy=True with a new passing self-test", 60*time.Second, metav1.ConditionTrue)
}
