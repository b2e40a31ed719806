package e2e

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/driverpilot/driverpilot/agent/falco"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/testenv"
	"github.com/driverpilot/driverpilot/internal/testutil"
)

// TestFalcoSensorOverHTTP runs the Falco path of the loop on this machine: `driverpilot
// falco-config` (the pod's init step) reports the probe, waits for the manager's decision and
// writes Falco's configuration; a stand-in for Falco (falcoemu: the built-in eBPF sensor posting
// Falco-format alerts over HTTP) sends alerts to the real agent's receiver; the self-test passes
// on Falco's alerts and the node becomes RuntimeSecurityReady=True.
func TestFalcoSensorOverHTTP(t *testing.T) {
	ns := runFalcoLoop(t, "e2e-falco-ok", false)
	st := ns.Status.SelfTest
	if st == nil || st.Result != v1alpha1.SelfTestPassed || len(st.Checks) != len(v1alpha1.AllChecks) {
		t.Fatalf("self-test: %+v", st)
	}
	for _, c := range st.Checks {
		if c.Result != v1alpha1.SelfTestPassed {
			t.Errorf("check %s: %s (%s)", c.Name, c.Result, c.Message)
		}
	}
}

// TestFalcoSensorFailsWhenUpperAlertsAreDropped: the same, with a Falco that never raises the
// drop-and-execute alert (falco#3286): the self-test fails, naming ExeUpperLayer, and with no
// other driver allowed the node ends NoSupportedDriver.
func TestFalcoSensorFailsWhenUpperAlertsAreDropped(t *testing.T) {
	ns := runFalcoLoop(t, "e2e-falco-drop", true)
	if len(ns.Spec.FailedAttempts) == 0 || !strings.Contains(ns.Spec.FailedAttempts[0].Reason, "ExeUpperLayer") {
		t.Errorf("failed attempts %+v do not name ExeUpperLayer", ns.Spec.FailedAttempts)
	}
	st := ns.Status.SelfTest
	if st == nil || st.Result != v1alpha1.SelfTestFailed {
		t.Fatalf("self-test: %+v", st)
	}
	for _, c := range st.Checks {
		wantFailed := c.Name == v1alpha1.CheckExeUpperLayer || c.Name == v1alpha1.CheckExeCopyUp
		if (c.Result == v1alpha1.SelfTestFailed) != wantFailed {
			t.Errorf("check %s: %s (%s); want failed only for the upper-layer checks", c.Name, c.Result, c.Message)
		}
	}
}

// runFalcoLoop runs the loop for one node until its condition settles (True, or False when
// upper-layer alerts are dropped) and returns its NodeSensor.
func runFalcoLoop(t *testing.T, name string, dropUpper bool) *v1alpha1.NodeSensor {
	t.Helper()
	testenv.Require(t)
	requireRootAndBPF(t)
	bin := testutil.BuildPackage(t, "./cmd/driverpilot")
	emu := testutil.BuildPackage(t, "./test/e2e/falcoemu")
	ctx := context.Background()

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"e2e-falco": name}}}
	if err := env.Client.Create(ctx, node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, node) })
	cfg := agentKubeconfig(t, name)
	profile := &v1alpha1.SecurityProfile{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.SecurityProfileSpec{
			NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"e2e-falco": name}},
			Sensor:       v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "docker.io/falcosecurity/falco:0.42.1"},
			Drivers:      v1alpha1.DriverPolicy{Preference: []v1alpha1.Driver{v1alpha1.DriverModernEBPF}},
			SelfTest:     v1alpha1.SelfTestSpec{Checks: v1alpha1.AllChecks, Timeout: &metav1.Duration{Duration: 5 * time.Second}},
		},
	}
	if err := env.Client.Create(ctx, profile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, profile) })

	alertAddr, healthAddr := freeAddr(t), freeAddr(t)
	emuArgs := []string{"-url", "http://" + alertAddr + falco.AlertsPath, "-health", healthAddr, "-driver", "modern_ebpf"}
	if dropUpper {
		emuArgs = append(emuArgs, "-drop-upper")
	}
	var emuLog, stepLog, agentLog strings.Builder
	start(t, exec.Command(emu, emuArgs...), &emuLog)

	// The init step: it reports the probe, so the manager decides, and exits once it has written.
	confDir := filepath.Join(t.TempDir(), "falco")
	step := exec.Command(bin, "falco-config", "--node-name", name, "--kubeconfig", cfg, "--output-dir", confDir, "--heartbeat", "1s")
	step.Stdout, step.Stderr = &stepLog, &stepLog
	done := make(chan error, 1)
	if err := step.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- step.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("falco-config: %v\n%s", err, stepLog.String())
		}
	case <-time.After(60 * time.Second):
		_ = step.Process.Kill()
		t.Fatalf("falco-config did not finish within 60s:\n%s", stepLog.String())
	}
	if d, err := falco.ConfiguredDriver(confDir); err != nil || d != v1alpha1.DriverModernEBPF {
		t.Fatalf("falco-config wrote %q (%v), want modern_ebpf", d, err)
	}

	start(t, exec.Command(bin, "agent", "--node-name", name, "--kubeconfig", cfg, "--heartbeat", "1s",
		"--workdir", t.TempDir(), "--alerts", "",
		"--falco-listen", alertAddr, "--falco-config-dir", confDir,
		"--falco-health-url", "http://"+healthAddr+"/healthz", "--falco-start-timeout", "30s"), &agentLog)

	want, reason := corev1.ConditionTrue, "Verified"
	if dropUpper {
		want, reason = corev1.ConditionFalse, "NoSupportedDriver"
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		cond := readyCondition(t, name)
		if cond != nil && cond.Status == want && cond.Reason == reason {
			break
		}
		if time.Now().After(deadline) {
			ns := &v1alpha1.NodeSensor{}
			_ = env.Client.Get(ctx, client.ObjectKey{Name: name}, ns)
			t.Fatalf("node condition not %s/%s within 90s: %+v\nnode sensor %+v\nagent:\n%s\nfalcoemu:\n%s", want, reason, cond, ns, agentLog.String(), emuLog.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	ns := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: name}, ns); err != nil {
		t.Fatal(err)
	}
	t.Logf("self-test over Falco alerts: %s %s: %s", ns.Status.SelfTest.Result, ns.Status.SelfTest.Reason, ns.Status.SelfTest.Message)
	return ns
}

// start runs cmd until the test ends, then stops it with SIGTERM.
func start(t *testing.T, cmd *exec.Cmd, logs *strings.Builder) {
	t.Helper()
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("%s did not stop within 10s of SIGTERM", filepath.Base(cmd.Path))
		}
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
