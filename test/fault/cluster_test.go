package fault

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/driverpilot/driverpilot/internal/scheme"
	"github.com/driverpilot/driverpilot/internal/testenv"
)

// cluster is a control plane whose API server can be restarted while etcd keeps its data.
type cluster struct {
	env    *envtest.Environment
	config *rest.Config
	client client.Client
}

// startCluster starts etcd and kube-apiserver with the CRDs installed. The API server's
// certificates live in a directory of the test's, so a restarted API server serves the same
// certificate on the same port and every client (the manager's kubeconfig too) reconnects.
func startCluster(t *testing.T, root string) *cluster {
	t.Helper()
	e := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		// kube-apiserver takes 5 to 20s to start on two busy cores; envtest's default is 20s.
		ControlPlaneStartTimeout: time.Minute,
	}
	e.ControlPlane.APIServer = &envtest.APIServer{CertDir: t.TempDir()}
	cfg, err := e.Start()
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Logf("stop control plane: %v", err)
		}
	})
	cfg.QPS, cfg.Burst = 500, 1000
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{env: e, config: cfg, client: c}
}

// restartAPIServer stops kube-apiserver (SIGTERM, then SIGKILL after stopTimeout: with watches
// open it takes about 20s to go gracefully), waits, and starts it again on the same port.
func (c *cluster) restartAPIServer(stopTimeout, down time.Duration) (killed bool, took time.Duration, err error) {
	start := time.Now()
	api := c.env.ControlPlane.GetAPIServer()
	saved := api.StopTimeout
	api.StopTimeout = stopTimeout
	err = api.Stop()
	api.StopTimeout = saved
	if err != nil {
		if !strings.Contains(err.Error(), "timeout waiting for process") {
			return false, 0, fmt.Errorf("stop api server: %w", err)
		}
		killed = true // process.State.Stop sent SIGKILL after the timeout
	}
	time.Sleep(down)
	if err := api.Start(); err != nil {
		return killed, 0, fmt.Errorf("start api server: %w", err)
	}
	return killed, time.Since(start), nil
}

// kubeconfig writes a kubeconfig for a new user of the system:masters group.
func (c *cluster) kubeconfig(t *testing.T, user string) (string, *rest.Config) {
	t.Helper()
	u, err := c.env.AddUser(envtest.User{Name: user, Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := u.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), user+".kubeconfig")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := u.Config()
	cfg.QPS, cfg.Burst = 500, 1000
	return path, cfg
}

// buildDriverpilot builds cmd/driverpilot into dir.
func buildDriverpilot(root, dir string) (string, error) {
	bin := filepath.Join(dir, "driverpilot")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/driverpilot")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build driverpilot: %v\n%s", err, out)
	}
	return bin, nil
}

// manager is `driverpilot manager` running as a child process; each start appends to one log.
type manager struct {
	bin, kubeconfig, logPath string
	args                     []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	starts int
}

func newManager(t *testing.T, bin, kubeconfig string, args ...string) *manager {
	m := &manager{bin: bin, kubeconfig: kubeconfig, logPath: filepath.Join(t.TempDir(), "manager.log"), args: args}
	t.Cleanup(m.stop)
	return m
}

// start starts the manager and waits until its workers run (its caches are synced).
func (m *manager) start(ctx context.Context) error {
	m.mu.Lock()
	logFile, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	m.starts++
	fmt.Fprintf(logFile, "=== fault suite: manager start %d\n", m.starts)
	before, _ := os.ReadFile(m.logPath)
	cmd := exec.Command(m.bin, append([]string{"manager"}, m.args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+m.kubeconfig)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		m.mu.Unlock()
		return fmt.Errorf("start manager: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logFile.Close(); close(done) }()
	m.cmd, m.done = cmd, done
	m.mu.Unlock()

	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(m.logPath)
		if bytes.Contains(b[len(before):], []byte("Starting workers")) {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("manager exited early:\n%s", m.tail(3000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("manager workers did not start within a minute:\n%s", m.tail(3000))
}

// kill sends SIGKILL to the manager and waits for it to die.
func (m *manager) kill() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// running reports whether the manager process is alive.
func (m *manager) running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

func (m *manager) stop() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		m.kill()
	}
}

// tail is the end of the manager's log.
func (m *manager) tail(n int) string {
	b, _ := os.ReadFile(m.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func repoRoot(t *testing.T) string {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip(testenv.ErrNoAssets.Error())
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}
