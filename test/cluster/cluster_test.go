package cluster_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/heartbeat"
	"github.com/driverpilot/driverpilot/internal/localcluster"
	"github.com/driverpilot/driverpilot/internal/scheme"
	"github.com/driverpilot/driverpilot/internal/testutil"
)

// TestRealCluster installs DriverPilot as the README says and proves it end to end. The steps
// build on each other; the first failure stops the rest.
func TestRealCluster(t *testing.T) {
	e := startCluster(t)
	steps := []struct {
		name string
		f    func(*testing.T, *env)
	}{
		{"InstallVerifiesTheNode", testInstall},
		{"DropAndExecuteAlertsNamingTheContainer", testDropAndExecute},
		{"AgentTokenWritesOnlyItsOwnNode", testAdmissionWithRealTokens},
		{"AgentPodRecreatedAndVerifiedAgain", testAgentPodRestart},
		{"AgentPodRenewsItsLease", testAgentRenewsItsLease},
		{"UpgradeReverifiesWithoutLeavingTrue", testUpgrade},
		{"DeletingTheProfileCleansTheNode", testDeleteProfile},
		{"UninstallLeavesNothingOnTheHost", testUninstall},
		{"OLMBundleInstallAndUpgrade", testOLMBundle},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { s.f(t, e) }) {
			t.Fatalf("%s failed; the later steps depend on it", s.name)
		}
	}
}

func kernelRelease(t *testing.T) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

// testInstall is proof 1: the README's install, then the node True with modern_ebpf, verified
// by the agent pod, with the facts measured inside the pod.
func testInstall(t *testing.T, e *env) {
	steps := localcluster.InstallSteps
	for _, s := range steps[:len(steps)-1] {
		e.kubectl(t, s...)
	}
	applied := time.Now()
	e.kubectl(t, steps[len(steps)-1]...)
	ns := e.waitVerified(t, version, applied, 5*time.Minute)
	t.Logf("kubectl apply of the profile to %s=True: %s", conditionType, time.Since(applied).Round(100*time.Millisecond))

	if ns.Spec.Driver != v1alpha1.DriverModernEBPF {
		t.Errorf("driver %s, want modern_ebpf on this kernel", ns.Spec.Driver)
	}
	c, _ := e.condition(t.Context())
	if !strings.Contains(c.Message, "modern_ebpf") {
		t.Errorf("condition message %q does not name the driver", c.Message)
	}
	for _, check := range ns.Status.SelfTest.Checks {
		if check.Result != v1alpha1.SelfTestPassed {
			t.Errorf("check %s: %s (%s)", check.Name, check.Result, check.Message)
		}
	}
	wide := e.kubectl(t, "get", "nsensor", "-o", "wide")
	t.Logf("kubectl get nsensor -o wide:\n%s", wide)
	if !strings.Contains(wide, kernelRelease(t)) || !strings.Contains(wide, "modern_ebpf") {
		t.Errorf("kubectl get nsensor -o wide does not show this kernel (%s) and the driver", kernelRelease(t))
	}
	if ns.Status.Probe == nil || ns.Status.Probe.Kernel.BootID.Value == "" {
		t.Fatalf("no probe facts with a boot ID: %+v", ns.Status.Probe)
	}
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if got := ns.Status.Probe.Kernel.BootID.Value; got != strings.TrimSpace(string(boot)) {
		t.Errorf("the pod measured boot ID %q, the host has %q", got, strings.TrimSpace(string(boot)))
	}
	// The verdict came from the DaemonSet's pod under its own service account, and the manager
	// runs as the Deployment's pod.
	pod, err := e.agentPod(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if pod.Spec.ServiceAccountName != "driverpilot-agent" {
		t.Errorf("agent pod runs as %q", pod.Spec.ServiceAccountName)
	}
	if sc := pod.Spec.Containers[0].SecurityContext; sc == nil || sc.Privileged == nil || *sc.Privileged {
		t.Errorf("agent container is privileged or unset: %+v", sc)
	}
	pods := e.kubectl(t, "-n", namespace, "get", "pods", "-o", "wide")
	t.Logf("pods:\n%s", pods)
	if !strings.Contains(pods, "driverpilot-manager-") {
		t.Error("no manager pod")
	}
}

// testDropAndExecute is proof 2: a workload drops a binary into its container and runs it; the
// built-in sensor alerts naming that container, and not for the image's own executables.
func testDropAndExecute(t *testing.T, e *env) {
	dropped := fmt.Sprintf("dp-dropped-%d", time.Now().UnixNano()%100000)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "dropper", Namespace: "default"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "dropper", Image: workloadImage, ImagePullPolicy: corev1.PullNever,
				Args: []string{"drop", dropped},
			}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}
	if err := e.client.Create(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = e.client.Delete(t.Context(), pod) }()
	var containerID string
	eventually(t, 2*time.Minute, "workload running", func() error {
		if err := e.client.Get(t.Context(), client.ObjectKeyFromObject(pod), pod); err != nil {
			return err
		}
		if len(pod.Status.ContainerStatuses) == 0 || pod.Status.ContainerStatuses[0].State.Running == nil {
			return fmt.Errorf("phase %s", pod.Status.Phase)
		}
		_, containerID, _ = strings.Cut(pod.Status.ContainerStatuses[0].ContainerID, "://")
		return nil
	})
	var alert map[string]any
	eventually(t, time.Minute, "an alert for "+dropped, func() error {
		for _, a := range e.alerts(t) {
			f, _ := a["output_fields"].(map[string]any)
			if f["proc.exepath"] == dropped {
				alert = a
				return nil
			}
		}
		return fmt.Errorf("no alert with proc.exepath=%s", dropped)
	})
	t.Logf("alert: %v", alert["output"])
	f := alert["output_fields"].(map[string]any)
	if f["container.full_id"] != containerID || f["container.id"] != containerID[:12] {
		t.Errorf("alert names container %v (%v), the pod's is %s", f["container.id"], f["container.full_id"], containerID)
	}
	if f["k8s.pod.uid"] != string(pod.UID) {
		t.Errorf("alert names pod %v, want %s", f["k8s.pod.uid"], pod.UID)
	}
	if f["proc.is_exe_upper_layer"] != true || alert["rule"] != "Drop and execute new binary in container" {
		t.Errorf("alert is not an upper-layer exec: %v", alert)
	}
	logs, _ := e.cluster.Kubectl(t.Context(), "-n", "default", "logs", "dropper")
	if n := strings.Count(string(logs), "ran /workload: hello"); n != 3 {
		t.Fatalf("the workload ran its own executable %d times, want 3:\n%s", n, logs)
	}
	for _, a := range e.alerts(t) {
		f, _ := a["output_fields"].(map[string]any)
		if f["proc.exepath"] == "workload" {
			t.Errorf("the image's own executable was reported as drift: %v", a["output"])
		}
	}
}

// agentToken reads the agent pod's own service-account token from the kubelet's projected volume.
func agentToken(t *testing.T, e *env, pod *corev1.Pod) string {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(e.cluster.KubeletRootDir(), "pods", string(pod.UID), "volumes", "kubernetes.io~projected", "*", "token"))
	if len(paths) != 1 {
		t.Fatalf("agent pod token: found %v", paths)
	}
	token, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	return string(token)
}

// testAdmissionWithRealTokens is proof 3: the agent pod's own bound token (with its node-name
// claim, minted by the kubelet) may write its node's NodeSensor and no other.
func testAdmissionWithRealTokens(t *testing.T, e *env) {
	// A second node, selected by the profile, so the manager gives it a NodeSensor. It sorts
	// after the real node and is removed at the end of the step.
	other := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "zz-second-node", Labels: map[string]string{"kubernetes.io/os": "linux"}}}
	if err := e.client.Create(t.Context(), other); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.client.Delete(t.Context(), other); err != nil {
			t.Errorf("delete the second node: %v", err)
		}
	}()
	eventually(t, time.Minute, "a NodeSensor for the second node", func() error {
		return e.client.Get(t.Context(), client.ObjectKey{Name: other.Name}, &v1alpha1.NodeSensor{})
	})
	pod, err := e.agentPod(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := e.cluster.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	agentCfg := rest.AnonymousClientConfig(cfg)
	agentCfg.BearerToken = agentToken(t, e, pod)
	agentCS, err := kubernetes.NewForConfig(agentCfg)
	if err != nil {
		t.Fatal(err)
	}
	review, err := agentCS.AuthenticationV1().SelfSubjectReviews().Create(t.Context(), &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	user := review.Status.UserInfo
	t.Logf("agent token: %s, node-name claim %v", user.Username, user.Extra["authentication.kubernetes.io/node-name"])
	if user.Username != "system:serviceaccount:"+namespace+":driverpilot-agent" {
		t.Errorf("the agent pod's token is %s", user.Username)
	}
	agent, err := client.New(agentCfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	patch := client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"status":{"heartbeatTime":%q}}`, time.Now().UTC().Format(time.RFC3339)))
	own := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: e.cluster.NodeName()}}
	if err := agent.Status().Patch(t.Context(), own, patch); err != nil {
		t.Errorf("the agent's token may not write its own node's NodeSensor: %v", err)
	}
	foreign := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: other.Name}}
	err = agent.Status().Patch(t.Context(), foreign, patch)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "may write only the NodeSensor and the heartbeat Lease of its own node") {
		t.Errorf("writing another node's NodeSensor with the agent's token: %v, want the admission policy's refusal", err)
	} else {
		t.Logf("refused as expected: %v", err)
	}
	// The same for heartbeat Leases: its own node's, not another's.
	if err := heartbeat.Renew(t.Context(), agent, namespace, e.cluster.NodeName(), "cluster-test", time.Now()); err != nil {
		t.Errorf("the agent's token may not renew its own node's heartbeat Lease: %v", err)
	}
	err = heartbeat.Renew(t.Context(), agent, namespace, other.Name, "cluster-test", time.Now())
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), other.Name) {
		t.Errorf("renewing another node's heartbeat Lease with the agent's token: %v, want the admission policy's refusal", err)
	}
}

// testAgentRenewsItsLease: the agent pod, as shipped (its env, RBAC and admission policy),
// heartbeats through its node's Lease.
func testAgentRenewsItsLease(t *testing.T, e *env) {
	pod, err := e.agentPod(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// The first renewal comes one heartbeat period (agent.DefaultHeartbeat, 40s) after the agent
	// started, and every period after; 45s allows for the API's latency.
	eventually(t, 90*time.Second, "the agent pod renews its Lease", func() error {
		lease, err := e.cs.CoordinationV1().Leases(namespace).Get(t.Context(), e.cluster.NodeName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		holder := ""
		if lease.Spec.HolderIdentity != nil {
			holder = *lease.Spec.HolderIdentity
		}
		if holder != pod.Name {
			return fmt.Errorf("Lease held by %q, not by the agent pod %s", holder, pod.Name)
		}
		if age := time.Since(heartbeat.RenewTime(lease)); age > 45*time.Second {
			return fmt.Errorf("Lease renewed %s ago", age.Round(time.Second))
		}
		return nil
	})
}

// testAgentPodRestart is proof 4: a deleted agent pod is recreated and verifies again; the node
// is AgentNotRunning while no agent pod runs, and leaves True for no other reason.
func testAgentPodRestart(t *testing.T, e *env) {
	pod, err := e.agentPod(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	stop := e.watchCondition(t)
	deleted := time.Now()
	if err := e.cs.CoreV1().Pods(namespace).Delete(t.Context(), pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "a new agent pod", func() error {
		p, err := e.agentPod(t.Context())
		if err != nil {
			return err
		}
		if p.UID == pod.UID {
			return fmt.Errorf("still the old pod")
		}
		return nil
	})
	e.waitVerified(t, version, deleted, 3*time.Minute)
	t.Logf("the new agent pod verified the node %s after the old one was deleted", time.Since(deleted).Round(100*time.Millisecond))
	notTrue, gaps := stop()
	if len(notTrue) > 0 {
		t.Errorf("the node left True while its agent pod was replaced, for another reason than its pod: %v", notTrue)
	}
	// Between the old pod's end and the new pod's start no sensor runs there: the node says so.
	if len(gaps) == 0 {
		t.Error("the node never left True while no agent pod ran on it")
	} else {
		t.Logf("AgentNotRunning while the pod was replaced: %d samples, first: %s", len(gaps), gaps[0])
	}
}

// upgradeOverlay writes a kustomization that installs config/default at another image tag, as a
// user does with `kustomize edit set image`.
func upgradeOverlay(t *testing.T, e *env, tag string) string {
	dir := filepath.Join(e.root, "bin", "cluster-upgrade-"+tag)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	k := fmt.Sprintf("resources:\n  - ../../config/default\nimages:\n  - name: %s\n    newTag: %s\n", imageRepo, tag)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// testUpgrade is proof 5: the same install at the next image version; the node re-verifies
// under the new agent without leaving True.
func testUpgrade(t *testing.T, e *env) {
	stop := e.watchCondition(t)
	started := time.Now()
	e.kubectl(t, "apply", "--server-side", "-k", upgradeOverlay(t, e, nextVersion))
	e.kubectl(t, "-n", namespace, "rollout", "status", "deployment/driverpilot-manager", "--timeout=180s")
	e.waitVerified(t, nextVersion, started, 5*time.Minute)
	t.Logf("upgrade to %s re-verified the node in %s", nextVersion, time.Since(started).Round(100*time.Millisecond))
	if notTrue, gaps := stop(); len(notTrue) > 0 {
		t.Errorf("the node left True during the upgrade, for another reason than its agent pod's replacement: %v", notTrue)
	} else if len(gaps) > 0 {
		t.Logf("AgentNotRunning while the agent pod was replaced: %d samples", len(gaps))
	}
}

// testDeleteProfile is proof 6, first half: the condition, the taint and the NodeSensor go.
func testDeleteProfile(t *testing.T, e *env) {
	e.kubectl(t, "delete", "-f", "config/samples/security_v1alpha1_securityprofile.yaml", "--wait=true", "--timeout=120s")
	eventually(t, 2*time.Minute, "the node cleaned", func() error {
		n, err := e.cs.CoreV1().Nodes().Get(t.Context(), e.cluster.NodeName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range n.Status.Conditions {
			if string(c.Type) == conditionType {
				return fmt.Errorf("condition still there: %s %s", c.Status, c.Reason)
			}
		}
		for _, taint := range n.Spec.Taints {
			if taint.Key == taintKey {
				return fmt.Errorf("taint still there")
			}
		}
		list := &v1alpha1.NodeSensorList{}
		if err := e.client.List(t.Context(), list); err != nil {
			return err
		}
		if len(list.Items) > 0 {
			return fmt.Errorf("%d NodeSensors left", len(list.Items))
		}
		if _, err := e.agentPod(t.Context()); err == nil {
			return fmt.Errorf("an agent pod still runs")
		}
		return nil
	})
}

// testUninstall is proof 6, second half: after `kubectl delete -k config/default` nothing of
// DriverPilot runs or stays loaded on the host.
func testUninstall(t *testing.T, e *env) {
	e.kubectl(t, "delete", "-k", upgradeOverlay(t, e, nextVersion), "--wait=true", "--timeout=180s", "--ignore-not-found")
	assertHostClean(t, e)
}

// assertHostClean checks that no driverpilot process of the cluster's pods, no sensor program
// that nothing holds, and no self-test overlay is left on the host. Other driverpilot processes
// on the machine (a developer's tests) are not the cluster's.
func assertHostClean(t *testing.T, e *env) {
	t.Helper()
	eventually(t, time.Minute, "no driverpilot process, BPF program or overlay left", func() error {
		var left []string
		entries, _ := os.ReadDir("/proc")
		for _, ent := range entries {
			exe, err := os.Readlink(filepath.Join("/proc", ent.Name(), "exe"))
			if err != nil || filepath.Base(exe) != "driverpilot" {
				continue
			}
			if cg, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cgroup")); strings.Contains(string(cg), "kubepods") {
				left = append(left, "process "+ent.Name()+" "+exe)
			}
		}
		left = append(left, testutil.UnheldSensorPrograms(t)...)
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		for _, l := range strings.Split(string(mounts), "\n") {
			if strings.Contains(l, "driverpilot-selftest") && strings.Contains(l, e.cluster.StateDir()) {
				left = append(left, "mount "+l)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("%v", left)
		}
		return nil
	})
}
