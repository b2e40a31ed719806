// Package deploy tests what ships: config/default rendered with the kustomize API and applied to
// a real API server, the manager running with exactly the RBAC it ships with, the OLM bundle
// (validated with the operator-framework library and reproduced byte for byte), and the image.
package deploy

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/hack/bundle/bundlegen"
	"github.com/driverpilot/driverpilot/internal/manager"
	"github.com/driverpilot/driverpilot/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

const fieldOwner = client.FieldOwner("driverpilot-deploy-test")

func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func render(t testing.TB, dir string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := bundlegen.Render(filepath.Join(repoRoot(t), dir))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]*unstructured.Unstructured, len(objs))
	for i, o := range objs {
		out[i] = &unstructured.Unstructured{Object: o}
	}
	return out
}

func id(u *unstructured.Unstructured) string {
	if ns := u.GetNamespace(); ns != "" {
		return fmt.Sprintf("%s %s/%s", u.GetKind(), ns, u.GetName())
	}
	return u.GetKind() + " " + u.GetName()
}

// apply server-side applies obj the way `kubectl apply --server-side` does.
func apply(ctx context.Context, c client.Client, obj *unstructured.Unstructured) error {
	return c.Apply(ctx, client.ApplyConfigurationFromUnstructured(obj.DeepCopy()), fieldOwner, client.ForceOwnership)
}

// applyAll applies CRDs first (and waits until they serve), then namespaces, then the rest.
func applyAll(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	ctx := t.Context()
	rank := func(u *unstructured.Unstructured) int {
		switch u.GetKind() {
		case "CustomResourceDefinition":
			return 0
		case "Namespace":
			return 1
		}
		return 2
	}
	sorted := slices.Clone(objs)
	slices.SortStableFunc(sorted, func(a, b *unstructured.Unstructured) int { return rank(a) - rank(b) })
	for _, obj := range sorted {
		if err := apply(ctx, env.Client, obj); err != nil {
			t.Errorf("%s was refused: %v", id(obj), err)
			continue
		}
		if obj.GetKind() == "CustomResourceDefinition" {
			waitEstablished(t, obj.GetName())
		}
	}
}

func waitEstablished(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
		err := env.Client.Get(t.Context(), types.NamespacedName{Name: name}, u)
		if err == nil {
			var crd apiextensionsv1.CustomResourceDefinition
			if err = runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &crd); err == nil {
				for _, c := range crd.Status.Conditions {
					if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
						return
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRD %s not established: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readYAML(t testing.TB, path string) *unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &u.Object); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return u
}

var installOnce struct {
	sync.Once
	objs []*unstructured.Unstructured
	ok   bool
}

// installDefault renders config/default and applies it (once per package), with the trimmed
// ServiceMonitor CRD from testdata first because this API server has no Prometheus Operator.
func installDefault(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	testenv.Require(t)
	installOnce.Do(func() {
		smCRD := readYAML(t, filepath.Join("testdata", "servicemonitor-crd.yaml"))
		if err := apply(t.Context(), env.Client, smCRD); err != nil {
			t.Fatalf("ServiceMonitor CRD: %v", err)
		}
		waitEstablished(t, smCRD.GetName())
		objs := append(render(t, "config/default"), render(t, "config/prometheus")...)
		applyAll(t, objs)
		installOnce.objs, installOnce.ok = objs, !t.Failed()
	})
	if !installOnce.ok {
		t.Fatal("config/default did not apply (see TestDefaultConfigApplies)")
	}
	return installOnce.objs
}

// TestDefaultConfigApplies renders config/default with the kustomize API and server-side applies
// every object to the API server: every one must be accepted and read back.
func TestDefaultConfigApplies(t *testing.T) {
	objs := installDefault(t)
	kinds := map[string]int{}
	for _, obj := range objs {
		kinds[obj.GetKind()]++
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(obj.GroupVersionKind())
		if err := env.Client.Get(t.Context(), client.ObjectKeyFromObject(obj), got); err != nil {
			t.Errorf("%s not readable after apply: %v", id(obj), err)
		}
	}
	// What an install must contain, whoever edits config/.
	for _, k := range []string{"CustomResourceDefinition", "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
		"Role", "RoleBinding", "Deployment", "Service", "ServiceMonitor"} {
		if kinds[k] == 0 {
			t.Errorf("config/default renders no %s", k)
		}
	}
	// config/default alone must apply to a fresh cluster: built-in kinds and its own CRDs only.
	for _, obj := range render(t, "config/default") {
		if g := obj.GroupVersionKind().Group; g != "" && !strings.HasSuffix(g, ".k8s.io") && g != "apps" && g != "security.driverpilot.io" {
			t.Errorf("config/default renders %s of group %s, which a fresh cluster does not serve", id(obj), g)
		}
	}
	if kinds["CustomResourceDefinition"] != 3 {
		t.Errorf("config/default renders %d CRDs, want SecurityProfile, NodeSensor and FleetGroup", kinds["CustomResourceDefinition"])
	}
	t.Logf("applied %d objects: %v", len(objs), kinds)
}

// TestServerRefusesBadConfig shows that the apply above is a real check: a misspelt field and a
// bad value are refused, not silently dropped.
func TestServerRefusesBadConfig(t *testing.T) {
	objs := installDefault(t)
	monitor := find(t, objs, "ServiceMonitor", "driverpilot-manager").DeepCopy()
	monitor.SetName("driverpilot-typo")
	eps, _, _ := unstructured.NestedSlice(monitor.Object, "spec", "endpoints")
	eps[0].(map[string]any)["intervall"] = "30s"
	_ = unstructured.SetNestedSlice(monitor.Object, eps, "spec", "endpoints")
	if err := apply(t.Context(), env.Client, monitor); err == nil {
		t.Error("a ServiceMonitor endpoint with a misspelt field was accepted")
	}
	deploy := find(t, objs, "Deployment", "driverpilot-manager").DeepCopy()
	deploy.SetName("driverpilot-typo")
	_ = unstructured.SetNestedField(deploy.Object, "Sometimes", "spec", "template", "spec", "restartPolicy")
	if err := apply(t.Context(), env.Client, deploy); err == nil {
		t.Error("a Deployment with restartPolicy Sometimes was accepted")
	}
}

func find(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return nil
}

func managerDeployment(t testing.TB, objs []*unstructured.Unstructured) *appsv1.Deployment {
	t.Helper()
	var d appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objs, "Deployment", "driverpilot-manager").Object, &d); err != nil {
		t.Fatal(err)
	}
	return &d
}

// managerOptions parses the manager container's arguments with the manager's own flags, the
// way the container runs them (with $(POD_NAMESPACE) from the downward API).
func managerOptions(t testing.TB, d *appsv1.Deployment) (manager.Options, corev1.Container) {
	t.Helper()
	var c corev1.Container
	for _, x := range d.Spec.Template.Spec.Containers {
		if x.Name == "manager" {
			c = x
		}
	}
	if len(c.Args) == 0 || c.Args[0] != "manager" {
		t.Fatalf("manager container args %q do not start with the manager subcommand", c.Args)
	}
	vars := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace" {
			vars[e.Name] = d.Namespace
		}
	}
	var args []string
	for _, a := range c.Args[1:] {
		for k, v := range vars {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		args = append(args, a)
	}
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	var o manager.Options
	o.Bind(fs)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("manager args %q: %v", args, err)
	}
	if fs.NArg() > 0 {
		t.Fatalf("manager args leave %q unparsed", fs.Args())
	}
	return o, c
}

// TestDefaultConfigIsConsistent checks what the API server cannot: that the pieces of
// config/default refer to each other correctly.
func TestDefaultConfigIsConsistent(t *testing.T) {
	objs := render(t, "config/default")
	d := managerDeployment(t, objs)
	o, c := managerOptions(t, d)
	if !o.LeaderElect {
		t.Error("the manager runs without --leader-elect")
	}
	// No --agent-image: the manager reads its own pod's image (POD_NAME), so an overlay or OLM
	// that changes the image changes the agents' too.
	if o.AgentImage != "" {
		t.Errorf("--agent-image=%s is set: an install that changes the manager's image would leave the agents behind", o.AgentImage)
	}
	if !hasFieldEnv(c, "POD_NAME", "metadata.name") {
		t.Error("the manager has no POD_NAME from the downward API to read its own image")
	}
	if !strings.HasPrefix(c.Image, bundlegen.ImageRepo+":") || strings.HasSuffix(c.Image, ":latest") {
		t.Errorf("manager image %q is not a pinned %s tag", c.Image, bundlegen.ImageRepo)
	}
	if o.Namespace != "driverpilot-system" || d.Namespace != "driverpilot-system" {
		t.Errorf("manager in namespace %q with --namespace=%s", d.Namespace, o.Namespace)
	}
	find(t, objs, "ServiceAccount", d.Spec.Template.Spec.ServiceAccountName)
	find(t, objs, "ServiceAccount", o.AgentSA)
	find(t, objs, "Namespace", d.Namespace)

	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if want := ":" + fmt.Sprint(ports["metrics"]); o.MetricsAddr != want {
		t.Errorf("--metrics-bind-address=%s, container port metrics is %s", o.MetricsAddr, want)
	}
	if want := ":" + fmt.Sprint(ports["health"]); o.ProbeAddr != want {
		t.Errorf("--health-probe-bind-address=%s, container port health is %s", o.ProbeAddr, want)
	}
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		want := map[string]string{"liveness": "/healthz", "readiness": "/readyz"}[name]
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port.String() != "health" {
			t.Errorf("%s probe %+v, want GET %s on port health", name, p, want)
		}
	}
	sc, psc := c.SecurityContext, d.Spec.Template.Spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || sc == nil || sc.AllowPrivilegeEscalation == nil ||
		*sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("manager is not non-root, read-only, without privilege escalation and capabilities: pod %+v container %+v", psc, sc)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("manager resources %+v lack requests or a memory limit", c.Resources)
	}

	// Service → manager pods, ServiceMonitor → Service port.
	var svc corev1.Service
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objs, "Service", "driverpilot-manager-metrics").Object, &svc); err != nil {
		t.Fatal(err)
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("metrics Service selects %s=%s, the manager pods have %q", k, v, d.Spec.Template.Labels[k])
		}
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != "metrics" {
		t.Errorf("metrics Service ports %+v do not target the metrics port", svc.Spec.Ports)
	}
	mon := find(t, render(t, "config/prometheus"), "ServiceMonitor", "driverpilot-manager")
	sel, _, _ := unstructured.NestedStringMap(mon.Object, "spec", "selector", "matchLabels")
	for k, v := range sel {
		if svc.Labels[k] != v {
			t.Errorf("ServiceMonitor selects %s=%s, the metrics Service has %q", k, v, svc.Labels[k])
		}
	}
	eps, _, _ := unstructured.NestedSlice(mon.Object, "spec", "endpoints")
	if len(eps) != 1 || eps[0].(map[string]any)["port"] != svc.Spec.Ports[0].Name {
		t.Errorf("ServiceMonitor endpoints %v do not scrape Service port %q", eps, svc.Spec.Ports[0].Name)
	}

	// Every binding names a rendered role and rendered service accounts in the namespace.
	for _, b := range objs {
		if b.GetKind() != "RoleBinding" && b.GetKind() != "ClusterRoleBinding" {
			continue
		}
		ref, _, _ := unstructured.NestedStringMap(b.Object, "roleRef")
		find(t, objs, ref["kind"], ref["name"])
		subjects, _, _ := unstructured.NestedSlice(b.Object, "subjects")
		for _, s := range subjects {
			s := s.(map[string]any)
			if s["kind"] == "ServiceAccount" {
				find(t, objs, "ServiceAccount", s["name"].(string))
				if s["namespace"] != d.Namespace {
					t.Errorf("%s binds service account %s in namespace %v", id(b), s["name"], s["namespace"])
				}
			}
		}
	}
}

// TestSamplesApply applies config/samples: the API server (CRD schema and CEL rules) accepts them.
func TestSamplesApply(t *testing.T) {
	installDefault(t)
	for _, s := range render(t, "config/samples") {
		if err := env.Client.Create(t.Context(), s.DeepCopy(), client.DryRunAll, client.FieldValidation("Strict")); err != nil {
			t.Errorf("sample %s refused: %v", id(s), err)
		}
	}
}

// syncBuffer collects the manager's log for the failure message.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestManagerRunsWithShippedRBAC runs the manager with the arguments of the rendered Deployment,
// as its service account (impersonated, so only the RBAC from config/ applies): it must win the
// leader election in its namespace, reconcile a sample profile into an agent DaemonSet with the
// shipped image and agent service account, delete an outdated agent pod, and write the
// profile's status.
func TestManagerRunsWithShippedRBAC(t *testing.T) {
	objs := installDefault(t)
	d := managerDeployment(t, objs)
	o, c := managerOptions(t, d)
	// The manager's own pod (never scheduled here: envtest runs no kubelet), which it reads for
	// the image to give the agents, as in a cluster.
	self := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "driverpilot-manager-deploy-test", Namespace: d.Namespace}, Spec: d.Spec.Template.Spec}
	if err := env.Client.Create(t.Context(), self); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), self) })
	t.Setenv("POD_NAME", self.Name)
	t.Setenv("POD_NAMESPACE", self.Namespace)
	if !o.MetricsSecure {
		t.Error("the shipped manager serves metrics without authentication (--metrics-secure=false)")
	}
	// A free loopback port for the metrics check; the probes are not what this test is about.
	o.MetricsAddr, o.ProbeAddr = freeLoopbackAddr(t), "0"

	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: fmt.Sprintf("system:serviceaccount:%s:%s", d.Namespace, d.Spec.Template.Spec.ServiceAccountName),
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + d.Namespace, "system:authenticated"},
	}
	var logs syncBuffer
	ctrl.SetLogger(zap.New(zap.WriteTo(&logs), zap.UseDevMode(true)))
	mgr, err := manager.New(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
		if t.Failed() {
			t.Logf("manager log:\n%s", logs.String())
		}
	})

	checkMetricsServeOnlyAuthorizedScrapers(t, o.MetricsAddr, d.Namespace)

	profile := find(t, render(t, "config/samples"), "SecurityProfile", "default").DeepCopy()
	profile.SetName("deploy-test")
	if err := env.Client.Create(t.Context(), profile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), profile) })

	// Fail at the first refusal rather than at the timeout.
	refused := func() error {
		if l := grep(logs.String(), "is forbidden"); l != "" {
			return fmt.Errorf("%w: the shipped RBAC refuses the manager: %s", errStop, l)
		}
		return nil
	}
	eventually(t, 60*time.Second, "the manager holds the leader lease", func() error {
		if err := refused(); err != nil {
			return err
		}
		var lease coordinationv1.Lease
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: o.Namespace, Name: "driverpilot-manager.security.driverpilot.io"}, &lease); err != nil {
			return err
		}
		if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
			return fmt.Errorf("lease has no holder")
		}
		return nil
	})
	eventually(t, 60*time.Second, "the profile's agent DaemonSet exists", func() error {
		if err := refused(); err != nil {
			return err
		}
		var ds appsv1.DaemonSet
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: o.Namespace, Name: "driverpilot-agent-deploy-test"}, &ds); err != nil {
			return err
		}
		spec := ds.Spec.Template.Spec
		if spec.ServiceAccountName != o.AgentSA || len(spec.Containers) == 0 || spec.Containers[0].Image != c.Image {
			return fmt.Errorf("DaemonSet runs %s as %s, want the manager's own image %s as %s", spec.Containers[0].Image, spec.ServiceAccountName, c.Image, o.AgentSA)
		}
		return nil
	})
	// An agent pod of an outdated template on a node whose agent has not reported yet (not
	// protected): the manager, watching agent pods in its namespace, deletes it at once.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "deploy-test-node"}}
	if err := env.Client.Create(t.Context(), node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), node) })
	var ds appsv1.DaemonSet
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: o.Namespace, Name: "driverpilot-agent-deploy-test"}, &ds); err != nil {
		t.Fatal(err)
	}
	outdated := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "driverpilot-agent-deploy-test-outdated", Namespace: o.Namespace, Labels: ds.Spec.Template.Labels,
			Annotations: map[string]string{"security.driverpilot.io/template-hash": "outdated"}},
		Spec: corev1.PodSpec{NodeName: node.Name, Containers: []corev1.Container{{Name: "agent", Image: c.Image}}},
	}
	if err := env.Client.Create(t.Context(), outdated); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), outdated, client.GracePeriodSeconds(0)) })
	eventually(t, 60*time.Second, "the outdated agent pod deleted by the manager", func() error {
		if err := refused(); err != nil {
			return err
		}
		var pod corev1.Pod
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(outdated), &pod); err != nil {
			return client.IgnoreNotFound(err)
		}
		if pod.DeletionTimestamp == nil {
			return fmt.Errorf("pod %s not deleted", pod.Name)
		}
		return nil
	})
	eventually(t, 60*time.Second, "the profile has a status", func() error {
		if err := refused(); err != nil {
			return err
		}
		var p v1alpha1.SecurityProfile
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(profile), &p); err != nil {
			return err
		}
		if p.Status.ObservedGeneration != p.Generation || len(p.Status.Conditions) == 0 {
			return fmt.Errorf("status %+v", p.Status)
		}
		return nil
	})
	if err := refused(); err != nil {
		t.Error(err)
	}
}

// errStop makes eventually give up at once.
var errStop = errors.New("no point waiting")

func grep(s, word string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || apierrors.IsForbidden(err) || errors.Is(err, errStop) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func hasFieldEnv(c corev1.Container, name, path string) bool {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == path {
			return true
		}
	}
	return false
}
