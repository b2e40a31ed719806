// Package rbac proves DriverPilot's permissions against the real API server: the manager's
// ClusterRole allows what the manager does and refuses a sample of what it must not do, and an
// agent can write only its own node's NodeSensor status.
package rbac

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/heartbeat"
	"github.com/driverpilot/driverpilot/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env, install) }

// install applies the manager's generated ClusterRole and the agent's RBAC and admission policy,
// exactly as committed under config/, and binds the manager role to a test user.
func install(e *testenv.Env) (func(), error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	if err := e.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "driverpilot-system"}}); err != nil {
		return nil, err
	}
	files := []string{filepath.Join(root, "config", "rbac", "role.yaml")}
	agentFiles, _ := filepath.Glob(filepath.Join(root, "config", "agent", "*.yaml"))
	for _, f := range agentFiles {
		if filepath.Base(f) != "kustomization.yaml" {
			files = append(files, f)
		}
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
				return nil, err
			}
			if len(u.Object) == 0 {
				continue
			}
			if err := e.Client.Create(ctx, u); err != nil {
				return nil, err
			}
		}
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "manager-test"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "driverpilot-manager"},
		Subjects:   []rbacv1.Subject{{Kind: "User", Name: "manager-test"}},
	}
	return func() {}, e.Client.Create(ctx, binding)
}

func impersonate(t *testing.T, user string, groups []string, extra map[string][]string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups, Extra: extra}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestManagerRoleRefusesWhatTheManagerDoesNotDo(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	mgr := impersonate(t, "manager-test", []string{"system:authenticated"}, nil)

	// What the manager does.
	if err := mgr.List(ctx, &corev1.NodeList{}); err != nil {
		t.Errorf("manager cannot list nodes: %v", err)
	}
	if err := mgr.List(ctx, &v1alpha1.NodeSensorList{}); err != nil {
		t.Errorf("manager cannot list node sensors: %v", err)
	}
	// A sample of what it must not do.
	forbidden := map[string]func() error{
		"read secrets": func() error {
			return mgr.List(ctx, &corev1.SecretList{}, client.InNamespace("kube-system"))
		},
		"create pods": func() error {
			return mgr.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "default"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}})
		},
		"delete namespaces": func() error {
			return mgr.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}})
		},
		"grant itself more": func() error {
			return mgr.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "escalate"},
				RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
				Subjects: []rbacv1.Subject{{Kind: "User", Name: "manager-test"}}})
		},
		"delete nodes": func() error {
			return mgr.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "any"}})
		},
		"delete security profiles": func() error {
			return mgr.Delete(ctx, &v1alpha1.SecurityProfile{ObjectMeta: metav1.ObjectMeta{Name: "any"}})
		},
	}
	for what, do := range forbidden {
		if err := do(); !apierrors.IsForbidden(err) {
			t.Errorf("manager could %s (err %v), want Forbidden", what, err)
		}
	}
}

func TestAgentWritesOnlyItsOwnNodeSensor(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	for _, name := range []string{"node-a", "node-b"} {
		ns := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.NodeSensorSpec{Profile: "p"}}
		if err := env.Client.Create(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	const sa = "system:serviceaccount:driverpilot-system:driverpilot-agent"
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:driverpilot-system", "system:authenticated"}
	agentA := impersonate(t, sa, groups, map[string][]string{"authentication.kubernetes.io/node-name": {"node-a"}})
	noNode := impersonate(t, sa, groups, nil)

	heartbeat := func(c client.Client, name string) error {
		ns := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(ctx, client.ObjectKey{Name: name}, ns); err != nil {
			return err
		}
		base := ns.DeepCopy()
		now := metav1.Now()
		ns.Status.HeartbeatTime = &now
		return c.Status().Patch(ctx, ns, client.MergeFrom(base))
	}
	// The policy takes a moment to load after it is created: wait until it refuses node B.
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err = heartbeat(agentA, "node-b"); apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
			break
		}
	}
	if err == nil {
		t.Fatal("the agent of node A wrote node B's NodeSensor status")
	}
	if !strings.Contains(err.Error(), "may write only the NodeSensor and the heartbeat Lease of its own node") || !strings.Contains(err.Error(), "node-b") {
		t.Errorf("refusal does not say why: %v", err)
	}
	if err := heartbeat(agentA, "node-a"); err != nil {
		t.Errorf("the agent of node A cannot write its own NodeSensor status: %v", err)
	}
	if err := heartbeat(noNode, "node-a"); err == nil {
		t.Error("an agent token without a node name wrote a NodeSensor status")
	}
	// RBAC: the spec is the manager's, and agents delete nothing.
	ns := &v1alpha1.NodeSensor{}
	if err := agentA.Get(ctx, client.ObjectKey{Name: "node-a"}, ns); err != nil {
		t.Fatalf("the agent cannot read its own NodeSensor: %v", err)
	}
	ns.Spec.Driver = v1alpha1.DriverKmod
	if err := agentA.Update(ctx, ns); !apierrors.IsForbidden(err) {
		t.Errorf("the agent changed its own decision (err %v), want Forbidden", err)
	}
	if err := agentA.Delete(ctx, ns); !apierrors.IsForbidden(err) {
		t.Errorf("the agent deleted its NodeSensor (err %v), want Forbidden", err)
	}
	if err := agentA.Create(ctx, &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: "node-c"}, Spec: v1alpha1.NodeSensorSpec{Profile: "p"}}); !apierrors.IsForbidden(err) {
		t.Errorf("the agent created a NodeSensor (err %v), want Forbidden", err)
	}
}

func TestAgentRenewsOnlyItsOwnLease(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	const sa, namespace = "system:serviceaccount:driverpilot-system:driverpilot-agent", "driverpilot-system"
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:driverpilot-system", "system:authenticated"}
	agentA := impersonate(t, sa, groups, map[string][]string{"authentication.kubernetes.io/node-name": {"lease-a"}})
	agentB := impersonate(t, sa, groups, map[string][]string{"authentication.kubernetes.io/node-name": {"lease-b"}})
	renew := func(c client.Client, node string) error {
		return heartbeat.Renew(ctx, c, namespace, node, "agent-"+node, time.Now())
	}
	// The policy takes a moment to load after it is created: wait until it refuses lease B.
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err = renew(agentA, "lease-b"); apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "lease-b") {
		t.Fatalf("the agent of node A created node B's heartbeat Lease, or was refused without saying why: %v", err)
	}
	// Created by its own agent, then renewed by it: the second renewal is a patch.
	for i := 0; i < 2; i++ {
		if err := renew(agentB, "lease-b"); err != nil {
			t.Fatalf("the agent of node B cannot renew its own Lease (renewal %d): %v", i+1, err)
		}
	}
	if err := renew(agentA, "lease-b"); !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
		t.Errorf("the agent of node A renewed node B's existing Lease (err %v), want a refusal", err)
	}
	lease := &coordinationv1.Lease{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "lease-b"}, lease); err != nil {
		t.Fatal(err)
	}
	if h := lease.Spec.HolderIdentity; h == nil || *h != "agent-lease-b" || lease.Spec.RenewTime == nil {
		t.Errorf("lease-b is not node B's agent Lease: %+v", lease.Spec)
	}
	if err := agentA.List(ctx, &coordinationv1.LeaseList{}, client.InNamespace("kube-system")); !apierrors.IsForbidden(err) {
		t.Errorf("the agent listed Leases outside its namespace (err %v), want Forbidden", err)
	}
}

func TestAgentDeletesOnlyItsOwnPod(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	for _, name := range []string{"agent-a", "agent-b"} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "driverpilot-system"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "driverpilot"}}}}
		if err := env.Client.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	const sa = "system:serviceaccount:driverpilot-system:driverpilot-agent"
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:driverpilot-system", "system:authenticated"}
	agentA := impersonate(t, sa, groups, map[string][]string{
		"authentication.kubernetes.io/node-name": {"node-a"}, "authentication.kubernetes.io/pod-name": {"agent-a"},
	})
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "driverpilot-system"}}
	}
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err = agentA.Delete(ctx, pod("agent-b"), client.DryRunAll); err != nil {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "may delete only its own pod") {
		t.Fatalf("the agent of pod agent-a deleted pod agent-b or was refused for another reason: %v", err)
	}
	if err := agentA.Delete(ctx, pod("agent-a")); err != nil {
		t.Errorf("the agent cannot delete its own pod: %v", err)
	}
	if err := agentA.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "default"}}); !apierrors.IsForbidden(err) {
		t.Errorf("the agent deleted a pod outside its namespace (err %v), want Forbidden", err)
	}
}
