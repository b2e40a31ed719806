// Package e2e runs the whole loop on this machine: a real kube-apiserver and etcd, the manager,
// and the real agent process with the built-in eBPF sensor against this kernel.
package e2e

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
	"github.com/driverpilot/driverpilot/internal/manager"
	"github.com/driverpilot/driverpilot/internal/testenv"
	"github.com/driverpilot/driverpilot/internal/testutil"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env, startManager) }

func startManager(e *testenv.Env) (func(), error) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	o := manager.Defaults()
	o.MetricsAddr, o.ProbeAddr, o.Namespace = "0", "0", "driverpilot-system"
	if err := e.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.Namespace}}); err != nil {
		return nil, err
	}
	mgr, err := manager.New(e.Config, o)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = mgr.Start(ctx) }()
	return func() { cancel(); <-done }, nil
}

func requireRootAndBPF(t *testing.T) { testutil.RequireKernel(t) }

// readyCondition returns the node's RuntimeSecurityReady condition, or nil.
func readyCondition(t *testing.T, nodeName string) *corev1.NodeCondition {
	t.Helper()
	n := &corev1.Node{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: nodeName}, n); err != nil {
		t.Fatal(err)
	}
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == v1alpha1.NodeConditionRuntimeSecurityReady {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

func overlayMountsOf(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), dir) {
			out = append(out, sc.Text())
		}
	}
	return out
}

// TestRealAgentVerifiesThisMachine runs `driverpilot agent` here against the envtest API server:
// the node must become RuntimeSecurityReady=True with modern_ebpf, every check passed, and the
// agent must leave no BPF program or mount behind when it stops.
func TestRealAgentVerifiesThisMachine(t *testing.T) {
	testenv.Require(t)
	requireRootAndBPF(t)
	bin := testutil.BuildPackage(t, "./cmd/driverpilot")
	ctx := context.Background()
	const nodeName = "e2e-this-machine"
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{"e2e": "true"}}}
	if err := env.Client.Create(ctx, node); err != nil {
		t.Fatal(err)
	}
	cfg := agentKubeconfig(t, nodeName)
	profile := &v1alpha1.SecurityProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e"},
		Spec: v1alpha1.SecurityProfileSpec{
			NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"e2e": "true"}},
			SelfTest: v1alpha1.SelfTestSpec{
				Checks:  v1alpha1.AllChecks,
				Timeout: &metav1.Duration{Duration: 5 * time.Second},
			},
		},
	}
	if err := env.Client.Create(ctx, profile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, profile) })

	workdir := t.TempDir()
	alerts := filepath.Join(t.TempDir(), "alerts.jsonl")
	// The agent holds exactly the capabilities its DaemonSet grants, as in its pod.
	agent := testutil.CapabilityCommand(t, controllers.AgentCapabilityNames(), bin, "agent", "--node-name", nodeName,
		"--kubeconfig", cfg, "--heartbeat", "1s", "--workdir", workdir, "--alerts", alerts)
	var logs strings.Builder
	agent.Stdout, agent.Stderr = &logs, &logs
	start := time.Now()
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	stopAgent := func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = agent.Process.Kill()
			t.Errorf("agent did not stop within 10s of SIGTERM")
			<-exited
		}
	}

	var ready time.Duration
	deadline := time.Now().Add(60 * time.Second)
	for {
		cond := readyCondition(t, nodeName)
		if cond != nil && cond.Status == corev1.ConditionTrue {
			ready = time.Since(start)
			if !strings.Contains(cond.Message, "modern_ebpf") {
				t.Errorf("condition message does not name modern_ebpf: %q", cond.Message)
			}
			break
		}
		if time.Now().After(deadline) {
			stopAgent()
			ns := &v1alpha1.NodeSensor{}
			_ = env.Client.Get(ctx, client.ObjectKey{Name: nodeName}, ns)
			t.Fatalf("node not Ready within 60s: condition %+v\nnode sensor %+v\nagent log:\n%s", cond, ns, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("agent start to RuntimeSecurityReady=True: %s (includes process start and probe)", ready.Round(time.Millisecond))

	ns := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: nodeName}, ns); err != nil {
		t.Fatal(err)
	}
	if ns.Spec.Driver != v1alpha1.DriverModernEBPF {
		t.Errorf("driver %q, want modern_ebpf on this kernel", ns.Spec.Driver)
	}
	st := ns.Status.SelfTest
	if st == nil || st.Result != v1alpha1.SelfTestPassed || len(st.Checks) != len(v1alpha1.AllChecks) {
		t.Fatalf("self-test: %+v", st)
	}
	for _, c := range st.Checks {
		if c.Result != v1alpha1.SelfTestPassed {
			t.Errorf("check %s: %s (%s)", c.Name, c.Result, c.Message)
		}
	}
	if p := ns.Status.Probe; p == nil || p.EBPF.TPBTF.Answer != v1alpha1.AnswerYes || p.Kernel.BootID.Value == "" || p.Kernel.BootID.Value != st.BootID {
		t.Errorf("probe facts missing or inconsistent with the self-test: %+v", p)
	}
	// The running sensor reported the self-test's upper-layer execs as Falco-shaped alerts.
	data, err := os.ReadFile(alerts)
	if err != nil || !strings.Contains(string(data), `"proc.is_exe_upper_layer":true`) {
		t.Errorf("no upper-layer alert written to %s (err %v): %q", alerts, err, data)
	}

	// A NodeSensor deleted by hand comes back: the manager recreates it, the running agent
	// reports its facts to the new object and verifies again.
	oldUID := ns.UID
	if err := env.Client.Delete(ctx, ns); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		got := &v1alpha1.NodeSensor{}
		err := env.Client.Get(ctx, client.ObjectKey{Name: nodeName}, got)
		if err == nil && got.UID != oldUID && got.Status.Probe != nil && got.Status.SelfTest != nil &&
			got.Status.SelfTest.Result == v1alpha1.SelfTestPassed && got.Status.SelfTest.Attempt == got.Spec.Attempt && got.Spec.Attempt > 0 {
			break
		}
		if time.Now().After(deadline) {
			stopAgent()
			t.Fatalf("recreated NodeSensor not verified again within 30s (err %v): %+v\nagent log:\n%s", err, got, logs.String())
		}
	}

	stopAgent()
	// The kernel frees a program shortly after its last reference goes; allow it a moment.
	var left []string
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if left = testutil.UnheldSensorPrograms(t); len(left) == 0 {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("BPF programs left after the agent stopped: %v", left)
	}
	if left := overlayMountsOf(t, workdir); len(left) > 0 {
		t.Errorf("mounts left under the agent's workdir: %v", left)
	}
}
