package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
			NodeInfo:   corev1.NodeSystemInfo{KernelVersion: "6.18"},
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}},
		},
	}
	out, err := TrimNode(node)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Node)
	if got.ManagedFields != nil || got.Status.Images != nil || got.Status.NodeInfo.KernelVersion != "" || got.Status.Addresses != nil {
		t.Errorf("not trimmed: %+v", got)
	}
	if got.ResourceVersion != "42" || got.Labels["kubernetes.io/os"] != "linux" || got.Spec.ProviderID == "" ||
		len(got.Spec.Taints) != 1 || len(got.Status.Conditions) != 1 {
		t.Errorf("trimmed what the reconciler reads: %+v", got)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}}}
	if other, _ := TrimNode(pod); other != pod || pod.ManagedFields == nil {
		t.Error("a non-Node object is not passed through unchanged")
	}
}
