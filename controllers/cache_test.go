package controllers

import (
	"context"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

// TestTrimNodeKeepsWhatTheReconcilerReads: the image list, node info and managed fields go; the
// labels, resourceVersion, taints, providerID and conditions stay.
func TestTrimNodeKeepsWhatTheReconcilerReads(t *testing.T) {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", ResourceVersion: "42", Labels: map[string]string{"kubernetes.io/os": "linux"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec: corev1.NodeSpec{ProviderID: "aws:///eu-west-1a/i-1", Taints: []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}}},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			Images:     []corev1.ContainerImage{{Names: []string{"a-big-image"}, SizeBytes: 1 << 30}},
			NodeInfo:   corev1.NodeSystemInfo{KernelVersion: "6.18", OSImage: "Debian GNU/Linux 12 (bookworm)", Architecture: "amd64", BootID: "b", MachineID: "m"},
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}},
		},
	}
	out, err := TrimNode(node)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Node)
	if got.ManagedFields != nil || got.Status.Images != nil || got.Status.NodeInfo.BootID != "" || got.Status.NodeInfo.MachineID != "" || got.Status.Addresses != nil {
		t.Errorf("not trimmed: %+v", got)
	}
	if got.ResourceVersion != "42" || got.Labels["kubernetes.io/os"] != "linux" || got.Spec.ProviderID == "" ||
		len(got.Spec.Taints) != 1 || len(got.Status.Conditions) != 1 ||
		got.Status.NodeInfo.KernelVersion != "6.18" || got.Status.NodeInfo.OSImage == "" || got.Status.NodeInfo.Architecture != "amd64" {
		t.Errorf("trimmed what the reconciler reads: %+v", got)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}}}
	if other, _ := TrimNode(pod); other != pod || pod.ManagedFields == nil {
		t.Error("a non-Node object is not passed through unchanged")
	}
}

// TestTrimNodeSensorKeepsWhatTheManagerReads: each check keeps its name and result, everything
// else of the NodeSensor stays; the checks' details and the managed fields go.
func TestTrimNodeSensorKeepsWhatTheManagerReads(t *testing.T) {
	ns := &v1alpha1.NodeSensor{
		ObjectMeta: metav1.ObjectMeta{Name: "n", ResourceVersion: "7", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "agent"}}},
		Spec:       v1alpha1.NodeSensorSpec{Profile: "p", Driver: v1alpha1.DriverEBPF, Attempt: 2},
		Status: v1alpha1.NodeSensorStatus{AgentVersion: "0.1.0", SelfTest: &v1alpha1.SelfTestStatus{
			Attempt: 2, Result: v1alpha1.SelfTestPassed, Reason: "r", Message: "m",
			Checks: []v1alpha1.CheckResult{{Name: v1alpha1.CheckExeUpperLayer, Result: v1alpha1.SelfTestPassed,
				Expected: "exe_upper_layer", Observed: "exe_upper_layer", Method: "CORE", Message: "long"}},
		}},
	}
	// The manager's cache trims NodeSensors with it.
	var trim toolscache.TransformFunc
	for obj, by := range CacheOptions("x").ByObject {
		if _, ok := obj.(*v1alpha1.NodeSensor); ok {
			trim = by.Transform
		}
	}
	if trim == nil {
		t.Fatal("the manager's cache does not trim NodeSensors")
	}
	out, err := trim(ns)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*v1alpha1.NodeSensor)
	c := got.Status.SelfTest.Checks[0]
	if got.ManagedFields != nil || c.Expected != "" || c.Observed != "" || c.Method != "" || c.Message != "" {
		t.Errorf("not trimmed: %+v", got)
	}
	if c.Name != v1alpha1.CheckExeUpperLayer || c.Result != v1alpha1.SelfTestPassed || got.Spec.Attempt != 2 ||
		got.Status.SelfTest.Message != "m" || got.Status.AgentVersion != "0.1.0" || got.ResourceVersion != "7" {
		t.Errorf("trimmed what the manager reads: %+v", got)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}}}
	if other, _ := trim(node); other != node || node.ManagedFields == nil {
		t.Error("another object is not passed through unchanged")
	}
}

// TestListNodesReadsTheCachesOwnNodes: the manager's cache (controller-runtime's, never started
// here) exposes its Node informer's store, and listNodes returns the store's own Nodes, no copies.
func TestListNodesReadsTheCachesOwnNodes(t *testing.T) {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	mapper := meta.NewDefaultRESTMapper(nil)
	mapper.Add(corev1.SchemeGroupVersion.WithKind("Node"), meta.RESTScopeRoot)
	c, err := cache.New(&rest.Config{Host: "http://127.0.0.1:1"}, cache.Options{Scheme: s, Mapper: mapper})
	if err != nil {
		t.Fatal(err)
	}
	inf, err := c.GetInformer(context.Background(), &corev1.Node{})
	if err != nil {
		t.Fatal(err)
	}
	store := informerStore(inf)
	if store == nil {
		t.Fatalf("the cache's Node informer (%T) exposes no store: every pass would copy the fleet's Nodes", inf)
	}
	a, b := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a"}}, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "b"}}
	for _, n := range []*corev1.Node{a, b} {
		if err := store.Add(n); err != nil {
			t.Fatal(err)
		}
	}
	r := &SecurityProfileReconciler{nodeStore: store}
	nodes := r.listNodes()
	if len(nodes) != 2 || !slices.Contains(nodes, a) || !slices.Contains(nodes, b) {
		t.Errorf("listNodes = %v, want the store's own a and b", nodes)
	}
}
