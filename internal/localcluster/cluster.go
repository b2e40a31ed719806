package localcluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config says where the parts of the cluster are.
type Config struct {
	// StateDir holds everything the cluster writes (default /var/lib/driverpilot-cluster).
	StateDir string
	// KubeBin holds etcd and the Kubernetes binaries (hack/envtest-assets.sh).
	KubeBin string
	// NodeBin holds containerd, its shim, ctr and runc (hack/node-assets.sh).
	NodeBin string
	// CNIBin holds the CNI plugins (Debian's containernetworking-plugins: /usr/lib/cni).
	CNIBin string
	// NodeName is the node's name (default: this machine's host name).
	NodeName string
	// Log receives progress lines.
	Log io.Writer
}

// DefaultStateDir is where the cluster keeps its state when Config.StateDir is empty.
const DefaultStateDir = "/var/lib/driverpilot-cluster"

// Cluster is a running cluster.
type Cluster struct {
	cfg    Config
	pki    *pki
	record *hostRecord
	// holder keeps the node's network namespace alive.
	holder *exec.Cmd
	procs  []*component
	// cs is an admin client, made on first use (after the certificates exist).
	cs kubernetes.Interface
}

type component struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// state is what Down needs after a crash, written beside the host record: the node's network
// namespace, whose processes it kills.
type state struct {
	NetNS string `json:"netns"`
}

func (c *Cluster) dir(parts ...string) string {
	return filepath.Join(append([]string{c.cfg.StateDir}, parts...)...)
}

// ContainerdSocket is the node's CRI endpoint.
func (c *Cluster) ContainerdSocket() string { return c.dir("containerd", "containerd.sock") }

// Kubeconfig is an admin (system:masters) kubeconfig for the cluster, usable from the host.
func (c *Cluster) Kubeconfig() string { return c.kubeconfigPath("admin") }

// NodeName is the name of the cluster's only node.
func (c *Cluster) NodeName() string { return c.cfg.NodeName }

// StateDir is where the cluster keeps everything it writes.
func (c *Cluster) StateDir() string { return c.cfg.StateDir }

// KubeletRootDir is the kubelet's --root-dir (pod volumes live under pods/).
func (c *Cluster) KubeletRootDir() string { return c.dir("kubelet") }

func (c *Cluster) kubeconfigPath(name string) string { return c.dir("kubeconfig", name+".kubeconfig") }

func (c *Cluster) logf(format string, args ...any) {
	if c.cfg.Log != nil {
		fmt.Fprintf(c.cfg.Log, "cluster: "+format+"\n", args...)
	}
}

func (cfg *Config) defaults() error {
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if cfg.CNIBin == "" {
		cfg.CNIBin = "/usr/lib/cni"
	}
	if cfg.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return err
		}
		cfg.NodeName = strings.ToLower(h)
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root: the cluster runs a kubelet, containerd and network namespaces")
	}
	need := map[string][]string{
		cfg.KubeBin: {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"},
		cfg.NodeBin: {"containerd", "containerd-shim-runc-v2", "ctr", "runc"},
		cfg.CNIBin:  {"bridge", "host-local", "loopback"},
	}
	for dir, bins := range need {
		for _, b := range bins {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				return fmt.Errorf("%s is missing from %q (hack/envtest-assets.sh, hack/node-assets.sh and hack/deps.sh provide it)", b, dir)
			}
		}
	}
	for _, tool := range []string{"nsenter", "unshare", "ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not on PATH (hack/deps.sh installs it)", tool)
		}
	}
	return nil
}

// Up brings the cluster up and waits until its node is Ready. Images listed in images (docker
// archives) are imported into containerd before the kubelet starts. On error everything started
// is torn down again.
func Up(ctx context.Context, cfg Config, images ...string) (c *Cluster, err error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "host.json")); err == nil {
		return nil, fmt.Errorf("a cluster already runs here or was not torn down (%s exists): run `hack/cluster.sh down`", cfg.StateDir)
	}
	if _, err := os.Stat("/sys/class/net/" + hostLink); err == nil {
		return nil, fmt.Errorf("another local cluster runs on this machine (link %s exists): stop it, or clean up after it with `hack/cluster.sh down`", hostLink)
	}
	c = &Cluster{cfg: cfg}
	if err := os.MkdirAll(c.dir("logs"), 0o755); err != nil {
		return nil, err
	}
	if c.record, err = recordHost(); err != nil {
		return nil, err
	}
	if err := c.record.save(c.dir("host.json")); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.logf("bring-up failed (%v); tearing down; logs were in %s", err, c.dir("logs"))
			c.copyLogs()
			if derr := c.Down(); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	if err := makeRShared(); err != nil {
		return c, fmt.Errorf("make / rshared: %w", err)
	}
	if err := c.network(); err != nil {
		return c, err
	}
	if err := c.certificates(); err != nil {
		return c, err
	}
	if err := c.controlPlane(ctx); err != nil {
		return c, err
	}
	if err := c.node(ctx, images); err != nil {
		return c, err
	}
	return c, nil
}

// network creates the node's network namespace (held by a sleeping process) and the veth pair.
func (c *Cluster) network() error {
	c.logf("network namespace and veth %s (%s) <-> %s (%s)", hostLink, HostAddress, nodeLink, NodeAddress)
	c.holder = exec.Command("unshare", "--net", "--", "sleep", "infinity")
	c.holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.holder.Start(); err != nil {
		return fmt.Errorf("start network namespace holder: %w", err)
	}
	pid := c.holder.Process.Pid
	// unshare execs sleep once the namespace exists; wait for that.
	var ns string
	for i := 0; i < 100; i++ {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if strings.HasSuffix(exe, "/sleep") {
			ns, _ = os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	host, _ := os.Readlink("/proc/self/ns/net")
	if ns == "" || ns == host {
		return errors.New("the network namespace holder did not enter a new namespace")
	}
	st := state{NetNS: ns}
	data, _ := json.Marshal(st)
	if err := os.WriteFile(c.dir("state.json"), data, 0o600); err != nil {
		return err
	}
	p := strconv.Itoa(pid)
	steps := [][]string{
		{"ip", "link", "add", hostLink, "type", "veth", "peer", "name", nodeLink, "netns", p},
		{"ip", "addr", "add", HostAddress + addressPrefix, "dev", hostLink},
		{"ip", "link", "set", hostLink, "up"},
		{"nsenter", "--net=" + c.netnsPath(), "ip", "link", "set", "lo", "up"},
		{"nsenter", "--net=" + c.netnsPath(), "ip", "addr", "add", NodeAddress + addressPrefix, "dev", nodeLink},
		{"nsenter", "--net=" + c.netnsPath(), "ip", "link", "set", nodeLink, "up"},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

func (c *Cluster) netnsPath() string { return fmt.Sprintf("/proc/%d/ns/net", c.holder.Process.Pid) }

func (c *Cluster) certificates() error {
	var err error
	if c.pki, err = newPKI(c.dir("pki")); err != nil {
		return err
	}
	node := net.ParseIP(NodeAddress)
	apiIPs := []net.IP{node, net.ParseIP(KubernetesSvc), net.ParseIP("127.0.0.1")}
	apiNames := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}
	issues := []struct {
		name, cn string
		orgs     []string
		ips      []net.IP
		dns      []string
	}{
		{"apiserver", "kube-apiserver", nil, apiIPs, apiNames},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil},
		{"admin", "driverpilot-local-admin", []string{"system:masters"}, nil, nil},
		{"kube-controller-manager", "system:kube-controller-manager", nil, nil, nil},
		{"kube-scheduler", "system:kube-scheduler", nil, nil, nil},
		{"kubelet", "system:node:" + c.cfg.NodeName, []string{"system:nodes"}, nil, nil},
		{"kubelet-serving", "system:node:" + c.cfg.NodeName, []string{"system:nodes"}, []net.IP{node}, []string{c.cfg.NodeName}},
		{"kube-proxy", "system:kube-proxy", nil, nil, nil},
	}
	for _, i := range issues {
		if err := c.pki.issue(i.name, i.cn, i.orgs, i.ips, i.dns); err != nil {
			return err
		}
	}
	if err := c.pki.serviceAccountKey(); err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir("kubeconfig"), 0o700); err != nil {
		return err
	}
	server := "https://" + NodeAddress + ":6443"
	for _, name := range []string{"admin", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"} {
		if err := c.pki.kubeconfig(c.kubeconfigPath(name), name, server); err != nil {
			return err
		}
	}
	return nil
}

// start runs a component inside the node's network namespace, logging to logs/<name>.log.
func (c *Cluster) start(name, bin string, args ...string) error {
	logFile, err := os.Create(c.dir("logs", name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + c.netnsPath(), "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "PATH="+c.cfg.NodeBin+":"+c.cfg.CNIBin+":"+os.Getenv("PATH"))
	// A process group of its own: Ctrl-C in the terminal reaches us, and we stop the parts in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &component{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logFile.Close(); close(p.done) }()
	c.procs = append(c.procs, p)
	c.logf("started %s (pid %d)", name, cmd.Process.Pid)
	return nil
}

func (c *Cluster) controlPlane(ctx context.Context) error {
	k := func(b string) string { return filepath.Join(c.cfg.KubeBin, b) }
	p := c.pki.path
	if err := c.start("etcd", k("etcd"), "--data-dir="+c.dir("etcd"), "--listen-client-urls=http://127.0.0.1:2379",
		"--advertise-client-urls=http://127.0.0.1:2379", "--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380", "--initial-cluster=default=http://127.0.0.1:2380",
		"--unsafe-no-fsync"); err != nil {
		return err
	}
	if err := c.start("kube-apiserver", k("kube-apiserver"),
		"--advertise-address="+NodeAddress, "--bind-address=0.0.0.0", "--secure-port=6443",
		"--etcd-servers=http://127.0.0.1:2379", "--service-cluster-ip-range="+ServiceCIDR,
		"--client-ca-file="+c.pki.CAFile(), "--tls-cert-file="+p("apiserver.crt"), "--tls-private-key-file="+p("apiserver.key"),
		"--kubelet-client-certificate="+p("apiserver-kubelet-client.crt"), "--kubelet-client-key="+p("apiserver-kubelet-client.key"),
		"--service-account-key-file="+p("sa.pub"), "--service-account-signing-key-file="+p("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true", "--profiling=false", "--kubelet-preferred-address-types=InternalIP", "--v=1"); err != nil {
		return err
	}
	if err := c.waitHealthy(ctx, "https://"+NodeAddress+":6443/readyz", 90*time.Second); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	if err := c.start("kube-controller-manager", k("kube-controller-manager"),
		"--kubeconfig="+c.kubeconfigPath("kube-controller-manager"),
		"--authentication-kubeconfig="+c.kubeconfigPath("kube-controller-manager"),
		"--authorization-kubeconfig="+c.kubeconfigPath("kube-controller-manager"),
		"--service-account-private-key-file="+p("sa.key"), "--root-ca-file="+c.pki.CAFile(),
		"--use-service-account-credentials=true", "--leader-elect=false", "--bind-address=127.0.0.1",
		"--controllers=*,-node-ipam-controller", "--v=1"); err != nil {
		return err
	}
	return c.start("kube-scheduler", k("kube-scheduler"), "--kubeconfig="+c.kubeconfigPath("kube-scheduler"),
		"--authentication-kubeconfig="+c.kubeconfigPath("kube-scheduler"),
		"--authorization-kubeconfig="+c.kubeconfigPath("kube-scheduler"),
		"--leader-elect=false", "--bind-address=127.0.0.1", "--v=1")
}

func (c *Cluster) node(ctx context.Context, images []string) error {
	cni, err := c.cniConfig()
	if err != nil {
		return err
	}
	files := map[string]string{
		c.dir("containerd", "config.toml"):               c.containerdConfig(),
		c.dir("cni", "net.d", "10-driverpilot.conflist"): cni,
		c.dir("kubelet-config.yaml"):                     c.kubeletConfig(),
		c.dir("kube-proxy-config.yaml"):                  c.kubeProxyConfig(),
	}
	for path, content := range files {
		if err := writeFile(path, content); err != nil {
			return err
		}
	}
	if err := c.start("containerd", filepath.Join(c.cfg.NodeBin, "containerd"), "--config", c.dir("containerd", "config.toml")); err != nil {
		return err
	}
	if err := c.waitSocket(ctx, c.ContainerdSocket(), 30*time.Second); err != nil {
		return fmt.Errorf("containerd: %w", err)
	}
	for _, img := range images {
		if err := c.ImportImage(ctx, img); err != nil {
			return err
		}
	}
	if err := c.start("kubelet", filepath.Join(c.cfg.KubeBin, "kubelet"), "--config="+c.dir("kubelet-config.yaml"),
		"--kubeconfig="+c.kubeconfigPath("kubelet"), "--root-dir="+c.KubeletRootDir(),
		"--hostname-override="+c.cfg.NodeName, "--node-ip="+NodeAddress, "--v=1"); err != nil {
		return err
	}
	if err := c.start("kube-proxy", filepath.Join(c.cfg.KubeBin, "kube-proxy"), "--config="+c.dir("kube-proxy-config.yaml"), "--v=1"); err != nil {
		return err
	}
	return c.waitNodeReady(ctx, 120*time.Second)
}

// ImportImage imports a docker or OCI archive into containerd's k8s.io namespace.
func (c *Cluster) ImportImage(ctx context.Context, archive string) error {
	out, err := exec.CommandContext(ctx, filepath.Join(c.cfg.NodeBin, "ctr"), "--address", c.ContainerdSocket(),
		"-n", "k8s.io", "images", "import", "--no-unpack=false", archive).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import %s: %v: %s", archive, err, out)
	}
	c.logf("imported %s", strings.TrimSpace(string(out)))
	return nil
}

// Kubectl runs the cluster's kubectl (the pinned v1.37 build) with the admin kubeconfig.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return c.KubectlIn(ctx, "", args...)
}

// KubectlIn runs the cluster's kubectl in dir (the repository root for relative paths).
func (c *Cluster) KubectlIn(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.KubectlPath(), append([]string{"--kubeconfig", c.Kubeconfig()}, args...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// KubectlPath is the cluster's kubectl binary.
func (c *Cluster) KubectlPath() string { return filepath.Join(c.cfg.KubeBin, "kubectl") }

// RESTConfig returns an admin client configuration.
func (c *Cluster) RESTConfig() (*rest.Config, error) {
	return clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
}

func (c *Cluster) waitHealthy(ctx context.Context, url string, timeout time.Duration) error {
	pool := x509.NewCertPool()
	pool.AddCert(c.pki.caCert)
	cert, err := tls.LoadX509KeyPair(c.pki.path("admin.crt"), c.pki.path("admin.key"))
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	return c.poll(ctx, timeout, func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, body)
		}
		return nil
	})
}

func (c *Cluster) waitSocket(ctx context.Context, path string, timeout time.Duration) error {
	return c.poll(ctx, timeout, func() error {
		conn, err := net.Dial("unix", path)
		if err != nil {
			return err
		}
		return conn.Close()
	})
}

// Clientset is an admin client of the cluster.
func (c *Cluster) Clientset() (kubernetes.Interface, error) {
	if c.cs != nil {
		return c.cs, nil
	}
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	c.cs = cs
	return cs, nil
}

// NodeCondition returns the node's condition of type t, or nil when it has none.
func (c *Cluster) NodeCondition(ctx context.Context, t corev1.NodeConditionType) (*corev1.NodeCondition, error) {
	cs, err := c.Clientset()
	if err != nil {
		return nil, err
	}
	n, err := cs.CoreV1().Nodes().Get(ctx, c.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == t {
			return &n.Status.Conditions[i], nil
		}
	}
	return nil, nil
}

func (c *Cluster) waitNodeReady(ctx context.Context, timeout time.Duration) error {
	c.logf("waiting for node %s to be Ready", c.cfg.NodeName)
	return c.poll(ctx, timeout, func() error {
		cond, err := c.NodeCondition(ctx, corev1.NodeReady)
		switch {
		case err != nil:
			return err
		case cond == nil:
			return errors.New("node has no Ready condition yet")
		case cond.Status != corev1.ConditionTrue:
			return fmt.Errorf("node not ready: %s", cond.Message)
		}
		return nil
	})
}

// poll retries f until it succeeds, a component dies, ctx ends or timeout passes.
func (c *Cluster) poll(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		for _, p := range c.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited (%v); see %s", p.name, p.cmd.ProcessState, c.dir("logs", p.name+".log"))
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// copyLogs keeps the components' logs of a failed run in the temp directory for reading.
func (c *Cluster) copyLogs() {
	dst, err := os.MkdirTemp("", "driverpilot-cluster-logs-")
	if err != nil {
		return
	}
	entries, _ := os.ReadDir(c.dir("logs"))
	for _, e := range entries {
		if data, err := os.ReadFile(c.dir("logs", e.Name())); err == nil {
			_ = os.WriteFile(filepath.Join(dst, e.Name()), data, 0o600)
		}
	}
	c.logf("component logs copied to %s", dst)
}
