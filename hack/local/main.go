// Command local runs DriverPilot's whole loop on this machine: an embedded control plane
// (kube-apiserver and etcd), the CRDs, the manager, this machine registered as a Node, the real
// agent with the built-in eBPF sensor, and the sample profile. It prints the state as it
// converges and stops cleanly on Ctrl-C. Run it with `make run` (root: the agent loads BPF).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf/rlimit"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/yaml"

	"github.com/driverpilot/driverpilot/agent"
	"github.com/driverpilot/driverpilot/agent/probe"
	"github.com/driverpilot/driverpilot/agent/sensor"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/manager"
	"github.com/driverpilot/driverpilot/internal/testenv"
)

const sample = "config/samples/security_v1alpha1_securityprofile.yaml"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "driverpilot local:", err)
		os.Exit(1)
	}
}

func run() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: the agent loads eBPF programs and mounts the self-test's overlay")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctrl.SetLogger(zap.New(zap.WriteTo(logFile())))

	step("Starting the embedded control plane (kube-apiserver, etcd) with the CRDs")
	env, err := testenv.Start()
	if err != nil {
		return err
	}
	defer func() {
		step("Stopping the control plane")
		_ = env.Stop()
	}()
	root, _ := testenv.RepoRoot()
	kubeconfig, err := writeKubeconfig(env, filepath.Join(root, "bin", "local.kubeconfig"))
	if err != nil {
		return err
	}
	c := env.Client
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "driverpilot-system"}}); err != nil {
		return err
	}

	nodeName, _ := os.Hostname()
	step("Registering this machine as Node " + nodeName)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{
		"kubernetes.io/hostname": nodeName, "kubernetes.io/os": "linux", "kubernetes.io/arch": runtime.GOARCH,
	}}}
	if err := c.Create(ctx, node); err != nil {
		return err
	}

	step("Starting the manager")
	o := manager.Defaults()
	o.MetricsAddr, o.ProbeAddr, o.Namespace = "0", "0", "driverpilot-system"
	mgr, err := manager.New(env.Config, o)
	if err != nil {
		return err
	}
	done := make(chan struct{}, 2)
	go func() { defer func() { done <- struct{}{} }(); _ = mgr.Start(ctx) }()

	step("Starting the agent on this machine (built-in eBPF sensor; alerts in bin/local-alerts.jsonl)")
	if err := rlimit.RemoveMemlock(); err != nil {
		return err
	}
	unmount, err := probe.MountSecurityFS("/")
	if err == nil {
		defer unmount()
	}
	alerts, err := os.OpenFile(filepath.Join(root, "bin", "local-alerts.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer alerts.Close()
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		return err
	}
	a := agent.New(agent.Options{
		NodeName: nodeName, Client: wc, Prober: probe.New("/"),
		NewSensor: func(spec v1alpha1.NodeSensorSpec) (sensor.Sensor, error) {
			return sensor.NewBuiltin(sensor.Options{Alerts: alerts, Hostname: nodeName}), nil
		},
		WorkDir:           os.TempDir(),
		HeartbeatInterval: 10 * time.Second,
		Log:               ctrl.Log.WithName("agent"),
	})
	start := time.Now()
	go func() { defer func() { done <- struct{}{} }(); _ = a.Run(ctx) }()

	step("Applying " + sample)
	if err := apply(ctx, c, filepath.Join(root, sample)); err != nil {
		return err
	}
	fmt.Printf("\nPoint kubectl at it:  export KUBECONFIG=%s\n", kubeconfig)
	fmt.Printf("                      kubectl get securityprofiles,nodesensors -o wide\n")
	fmt.Printf("                      kubectl get node %s -o jsonpath='{.status.conditions}'\n", nodeName)
	fmt.Printf("Press Ctrl-C to stop; everything started here stops with it.\n")

	last, readyShown := "", false
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			view, ready := render(ctx, c, nodeName)
			if view != last {
				fmt.Printf("\n--- %s (+%s)\n%s", time.Now().Format("15:04:05"), time.Since(start).Round(time.Millisecond), view)
				last = view
			}
			if ready && !readyShown {
				fmt.Printf("\nNode %s is RuntimeSecurityReady %s after the agent started. Ctrl-C to stop.\n", nodeName, time.Since(start).Round(time.Millisecond))
				readyShown = true
			}
		}
	}
	step("Stopping the agent (sensor detached, overlay unmounted) and the manager")
	<-done
	<-done
	return nil
}

func step(msg string) { fmt.Printf("==> %s\n", msg) }

func logFile() *os.File {
	root, _ := testenv.RepoRoot()
	_ = os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	f, err := os.Create(filepath.Join(root, "bin", "local.log"))
	if err != nil {
		return os.Stderr
	}
	fmt.Printf("Logs of the manager and the agent: %s\n", f.Name())
	return f
}

func writeKubeconfig(env *testenv.Env, path string) (string, error) {
	user, err := env.Environment.AddUser(envtest.User{Name: "local-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return "", err
	}
	data, err := user.KubeConfig()
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, data, 0o600)
}

func apply(ctx context.Context, c client.Client, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &u.Object); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return c.Create(ctx, u)
}

// render prints profile, node sensor and node condition the way `kubectl get` shows them.
func render(ctx context.Context, c client.Client, nodeName string) (string, bool) {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 4, 3, ' ', 0)
	var profiles v1alpha1.SecurityProfileList
	_ = c.List(ctx, &profiles)
	fmt.Fprintln(w, "SECURITYPROFILE\tSENSOR\tSELECTED\tVERIFIED\tFAILED\tREADY\tREASON")
	for _, p := range profiles.Items {
		ready, reason := "", ""
		for _, cond := range p.Status.Conditions {
			if cond.Type == "Ready" {
				ready, reason = string(cond.Status), cond.Reason
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%s\t%s\n", p.Name, p.Spec.Sensor.Kind, p.Status.Nodes.Selected, p.Status.Nodes.Verified, p.Status.Nodes.Failed, ready, reason)
	}
	fmt.Fprintln(w)
	var sensors v1alpha1.NodeSensorList
	_ = c.List(ctx, &sensors)
	fmt.Fprintln(w, "NODESENSOR\tPROFILE\tDRIVER\tATTEMPT\tSELFTEST\tKERNEL")
	for _, ns := range sensors.Items {
		result, kernel := "", ""
		if ns.Status.SelfTest != nil && ns.Status.SelfTest.Attempt == ns.Spec.Attempt {
			result = string(ns.Status.SelfTest.Result)
		}
		if ns.Status.Probe != nil {
			kernel = ns.Status.Probe.Kernel.Release.Value
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", ns.Name, ns.Spec.Profile, ns.Spec.Driver, ns.Spec.Attempt, result, kernel)
	}
	w.Flush()
	for _, ns := range sensors.Items {
		for _, r := range ns.Spec.Reasons {
			fmt.Fprintf(&b, "  reason %s: %s [%s %s]\n", r.Driver, r.Message, r.Source, r.Rule)
		}
		if st := ns.Status.SelfTest; st != nil && st.Attempt == ns.Spec.Attempt {
			for _, ch := range st.Checks {
				lat := ""
				if ch.Latency != nil {
					lat = ch.Latency.Duration.String()
				}
				fmt.Fprintf(&b, "  check %-14s %-8s expected %q, observed %q %s %s\n", ch.Name, ch.Result, ch.Expected, ch.Observed, lat, ch.Method)
			}
		}
	}
	n := &corev1.Node{}
	ready := false
	if err := c.Get(ctx, client.ObjectKey{Name: nodeName}, n); err == nil {
		for _, cond := range n.Status.Conditions {
			if cond.Type == v1alpha1.NodeConditionRuntimeSecurityReady {
				fmt.Fprintf(&b, "\nnode/%s condition %s=%s reason=%s\n  %s\n", nodeName, cond.Type, cond.Status, cond.Reason, cond.Message)
				ready = cond.Status == corev1.ConditionTrue
			}
		}
	}
	return b.String(), ready
}
