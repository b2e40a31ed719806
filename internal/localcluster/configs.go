package localcluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// The cluster's addresses. All of them live inside network namespaces the cluster creates, except
// the host end of the veth pair, which is a link-local-scoped /30 that routes nowhere else.
const (
	HostAddress   = "10.250.0.1"
	NodeAddress   = "10.250.0.2"
	addressPrefix = "/30"
	ServiceCIDR   = "10.96.0.0/16"
	KubernetesSvc = "10.96.0.1"
	PodCIDR       = "10.244.0.0/24"
	// PauseImage is the sandbox image containerd uses; the cluster builds and imports it.
	PauseImage = "driverpilot.local/pause:1"
	hostLink   = "dp-host"
	nodeLink   = "dp-node"
)

func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o600)
}

// containerdConfig: cgroupfs (no systemd), runc from the node assets, the Debian CNI plugins, our
// own pause image, and every path under the state directory. restrict_oom_score_adj because
// CAP_SYS_RESOURCE is not in the bounding set here: runc could not lower a sandbox's score.
func (c *Cluster) containerdConfig() string {
	d := c.dir("containerd")
	return fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
imports = []

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[5]q

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %[6]q
        Root = %[7]q
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%[8]q]
    conf_dir = %[9]q

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true

[plugins.'io.containerd.internal.v1.opt']
  path = %[10]q

[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = %[11]q
`, filepath.Join(d, "root"), filepath.Join(d, "state"), c.ContainerdSocket(), c.ContainerdSocket()+".ttrpc",
		PauseImage, filepath.Join(c.cfg.NodeBin, "runc"), filepath.Join(d, "runc"), c.cfg.CNIBin,
		c.dir("cni", "net.d"), filepath.Join(d, "opt"), filepath.Join(d, "image-verifier"))
}

// cniConfig: one bridge in the node's network namespace, host-local addresses, no masquerade
// (nothing leaves the machine), IPAM state under the state directory.
func (c *Cluster) cniConfig() (string, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "driverpilot-local",
		"plugins": []any{map[string]any{
			"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": PodCIDR}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": c.dir("cni", "ipam"),
			},
		}},
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	return string(data), err
}

// kubeletConfig: cgroup v1 with the cgroupfs driver (no systemd here), x509 and webhook auth, no
// image garbage collection (the images are imported, there is no registry to pull them again),
// eviction thresholds that a busy build machine does not trip, and every path under the state
// directory.
func (c *Cluster) kubeletConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%[1]s
address: %[2]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[3]s}
authorization: {mode: Webhook}
tlsCertFile: %[4]s
tlsPrivateKeyFile: %[5]s
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
podLogsDir: %[6]s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 50Mi, nodefs.available: 1%%, imagefs.available: 1%%, nodefs.inodesFree: 1%%}
protectKernelDefaults: false
rotateCertificates: false
serializeImagePulls: false
maxPods: 30
`, c.ContainerdSocket(), NodeAddress, c.pki.CAFile(), c.pki.path("kubelet-serving.crt"), c.pki.path("kubelet-serving.key"),
		c.dir("pod-logs"))
}

// kubeProxyConfig: nftables mode; conntrack settings left alone (they are host-wide).
func (c *Cluster) kubeProxyConfig() string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: %[1]s}
hostnameOverride: %[2]s
clusterCIDR: %[3]s
bindAddress: %[4]s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, udpTimeout: 0s, udpStreamTimeout: 0s}
`, c.kubeconfigPath("kube-proxy"), c.cfg.NodeName, PodCIDR, NodeAddress)
}
