// Package cluster_test proves DriverPilot on a real single-node cluster built on this machine
// (internal/localcluster): installed exactly as the README says, the manager as the Deployment's
// pod, the agent as the DaemonSet's pod under its own service account, images built here and
// imported into containerd. hack/test.sh runs it after the other packages with the cluster parts
// in DRIVERPILOT_KUBE_BIN and DRIVERPILOT_NODE_BIN.
package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/hack/image/imagebuild"
	"github.com/driverpilot/driverpilot/internal/localcluster"
	"github.com/driverpilot/driverpilot/internal/scheme"
	"github.com/driverpilot/driverpilot/internal/testenv"
	"github.com/driverpilot/driverpilot/internal/testutil"
)

const (
	namespace     = "driverpilot-system"
	profileName   = "default"
	agentDS       = "driverpilot-agent-" + profileName
	imageRepo     = "ghcr.io/driverpilot/driverpilot"
	version       = "0.1.0"
	nextVersion   = "0.1.1"
	workloadImage = "driverpilot.local/workload:1"
	conditionType = "RuntimeSecurityReady"
	taintKey      = "security.driverpilot.io/unverified"
)

// env is the running cluster and its clients.
type env struct {
	cluster *localcluster.Cluster
	root    string
	client  client.Client
	cs      kubernetes.Interface
}

func requireCluster(t *testing.T) (kubeBin, nodeBin string) {
	t.Helper()
	testutil.RequireKernel(t)
	kubeBin, nodeBin = os.Getenv("DRIVERPILOT_KUBE_BIN"), os.Getenv("DRIVERPILOT_NODE_BIN")
	if kubeBin == "" || nodeBin == "" {
		t.Skip("DRIVERPILOT_KUBE_BIN and DRIVERPILOT_NODE_BIN are not set: run through `make test` (hack/test.sh builds the cluster's parts and sets them)")
	}
	return kubeBin, nodeBin
}

// buildImages builds what the cluster runs: the driverpilot image at two versions (as `make
// image` does), the pause image and the test workload.
func buildImages(t *testing.T, root, dir string) []string {
	t.Helper()
	var archives []string
	for _, v := range []string{version, nextVersion} {
		bin := filepath.Join(dir, "driverpilot-"+v)
		buildVersion(t, root, v, bin)
		img, err := imagebuild.Build(imagebuild.Options{Binary: bin, Version: v, Revision: "cluster-test"})
		if err != nil {
			t.Fatal(err)
		}
		archive := filepath.Join(dir, "driverpilot-"+v+".tar")
		if err := imagebuild.WriteTarball(archive, imageRepo+":"+v, img); err != nil {
			t.Fatal(err)
		}
		archives = append(archives, archive)
	}
	for pkg, ref := range map[string]string{"./hack/cluster/pause": localcluster.PauseImage, "./test/cluster/workload": workloadImage} {
		a, err := localcluster.BuildImageFromPackage(root, pkg, ref, dir)
		if err != nil {
			t.Fatal(err)
		}
		archives = append(archives, a)
	}
	return archives
}

// buildVersion builds cmd/driverpilot as `make build` does, stamped with version v.
func buildVersion(t *testing.T, root, v, out string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X github.com/driverpilot/driverpilot/internal/version.Version="+v,
		"-o", out, "./cmd/driverpilot")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build driverpilot %s: %v\n%s", v, err, out)
	}
}

func startCluster(t *testing.T) *env {
	t.Helper()
	kubeBin, nodeBin := requireCluster(t)
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	archives := buildImages(t, root, t.TempDir())
	stateDir := filepath.Join(os.TempDir(), "driverpilot-cluster-test")
	if err := localcluster.Cleanup(localcluster.Config{StateDir: stateDir}); err != nil {
		t.Fatalf("a previous run's cluster could not be removed: %v", err)
	}
	start := time.Now()
	cl, err := localcluster.Up(t.Context(), localcluster.Config{StateDir: stateDir, KubeBin: kubeBin, NodeBin: nodeBin, Log: testWriter{t}}, archives...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster up with node %s in %s", cl.NodeName(), time.Since(start).Round(100*time.Millisecond))
	record := filepath.Join(t.TempDir(), "host.json")
	if err := cl.SaveHostRecord(record); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.Down(); err != nil {
			t.Errorf("teardown: %v", err)
		}
		left, err := localcluster.Leftovers(record)
		if err != nil {
			t.Errorf("leftovers: %v", err)
		}
		for _, l := range left {
			t.Errorf("the cluster left %s on the host", l)
		}
	})
	cfg, err := cl.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := cl.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	return &env{cluster: cl, root: root, client: c, cs: cs}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// kubectl runs the cluster's kubectl from the repository root, as a user would.
func (e *env) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.cluster.KubectlIn(t.Context(), e.root, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func (e *env) condition(ctx context.Context) (*corev1.NodeCondition, error) {
	return e.cluster.NodeCondition(ctx, conditionType)
}

func (e *env) nodeSensor(ctx context.Context) (*v1alpha1.NodeSensor, error) {
	ns := &v1alpha1.NodeSensor{}
	return ns, e.client.Get(ctx, client.ObjectKey{Name: e.cluster.NodeName()}, ns)
}

// eventually polls f every 500ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

// reasonAgentNotRunning is the manager's reason for a node whose agent pod runs no sensor now
// (controllers.ReasonAgentNotRunning).
const reasonAgentNotRunning = "AgentNotRunning"

// watchCondition samples the node's condition every 200ms until stopped, and returns every
// sample that was not True (with its reason), so a step can prove the node never left True but
// while no agent pod ran its sensor: those samples (AgentNotRunning) come back apart, as gaps.
func (e *env) watchCondition(t *testing.T) (stop func() (notTrue, gaps []string)) {
	ctx, cancel := context.WithCancel(t.Context())
	var mu sync.Mutex
	var notTrue, gaps []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			c, err := e.condition(ctx)
			if err == nil {
				mu.Lock()
				switch {
				case c == nil:
					notTrue = append(notTrue, time.Now().Format(time.TimeOnly)+" no condition")
				case c.Reason == reasonAgentNotRunning:
					gaps = append(gaps, fmt.Sprintf("%s %s: %s", time.Now().Format(time.TimeOnly), c.Reason, c.Message))
				case c.Status != corev1.ConditionTrue:
					notTrue = append(notTrue, fmt.Sprintf("%s %s %s: %s", time.Now().Format(time.TimeOnly), c.Status, c.Reason, c.Message))
				}
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return func() ([]string, []string) {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return notTrue, gaps
	}
}

// waitVerified waits until the node is True with a passing self-test by an agent of version v
// that started after since.
func (e *env) waitVerified(t *testing.T, v string, since time.Time, timeout time.Duration) *v1alpha1.NodeSensor {
	t.Helper()
	var ns *v1alpha1.NodeSensor
	eventually(t, timeout, "node verified by agent "+v, func() error {
		c, err := e.condition(t.Context())
		if err != nil {
			return err
		}
		if c == nil || c.Status != corev1.ConditionTrue {
			return fmt.Errorf("condition %+v", c)
		}
		if ns, err = e.nodeSensor(t.Context()); err != nil {
			return err
		}
		st := ns.Status.SelfTest
		switch {
		case st == nil:
			return fmt.Errorf("no self-test yet")
		case st.Result != v1alpha1.SelfTestPassed:
			return fmt.Errorf("self-test %s: %s", st.Result, st.Message)
		case st.AgentVersion != v:
			return fmt.Errorf("self-test by agent %q, want %q", st.AgentVersion, v)
		case st.StartTime == nil || st.StartTime.Time.Before(since.Truncate(time.Second)):
			return fmt.Errorf("self-test started %v, before %v", st.StartTime, since)
		}
		return nil
	})
	return ns
}

// agentPod returns the running agent pod on the node.
func (e *env) agentPod(ctx context.Context) (*corev1.Pod, error) {
	pods, err := e.cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=driverpilot-agent",
		FieldSelector: "spec.nodeName=" + e.cluster.NodeName(),
	})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			return p, nil
		}
	}
	return nil, fmt.Errorf("no running agent pod on %s (%d pods)", e.cluster.NodeName(), len(pods.Items))
}

// alerts returns the Falco-shaped alerts in the agent pods' logs.
func (e *env) alerts(t *testing.T) []map[string]any {
	t.Helper()
	out, err := e.cluster.Kubectl(t.Context(), "-n", namespace, "logs", "-l", "app.kubernetes.io/name=driverpilot-agent", "--tail=-1", "--prefix=false")
	if err != nil {
		t.Logf("agent logs: %v", err)
		return nil
	}
	var alerts []map[string]any
	for _, line := range strings.Split(string(out), "\n") {
		var a map[string]any
		if json.Unmarshal([]byte(line), &a) == nil && a["rule"] != nil {
			alerts = append(alerts, a)
		}
	}
	return alerts
}
