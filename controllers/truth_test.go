package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
)

// An unusable profile (InvalidSpec) still keeps its nodes' conditions true: an agent that stops
// reporting turns its node Unknown (it stayed True until the profile was fixed).
func TestInvalidProfileKeepsNodeTruth(t *testing.T) {
	createNodes(t, "invtruth", "invtruth-a")
	agents := startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "invtruth-a")
	createProfile(t, profileFor("invtruth", "invtruth"))
	eventually(t, 20*time.Second, "verified", conditionIs(t, "invtruth-a", corev1.ConditionTrue, controllers.ReasonVerified))
	editProfile(t, "invtruth", func(p *v1alpha1.SecurityProfile) {
		p.Spec.Drivers.Overrides = []v1alpha1.DriverOverride{{Match: v1alpha1.OverrideMatch{KernelRelease: "([bad"}, Preference: []v1alpha1.Driver{v1alpha1.DriverKmod}}}
	})
	eventually(t, 20*time.Second, "profile InvalidSpec", func() error {
		c := meta.FindStatusCondition(getProfile(t, "invtruth").Status.Conditions, controllers.ConditionReady)
		if c == nil || c.Reason != controllers.ReasonInvalidSpec {
			return fmt.Errorf("Ready: %+v", c)
		}
		return nil
	})
	agents["invtruth-a"].stopHeartbeat()
	eventually(t, 3*heartbeatTimeout+5*time.Second, "unknown while the profile is invalid",
		conditionIs(t, "invtruth-a", corev1.ConditionUnknown, controllers.ReasonHeartbeatExpired))
}

// agentPod creates a running, ready agent pod of the profile on the node, as a kubelet would
// report it.
func agentPod(t *testing.T, profile, node string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	ds := &appsv1.DaemonSet{}
	eventually(t, 20*time.Second, "agent daemonset", func() error {
		return env.Client.Get(ctx, client.ObjectKey{Namespace: agentNamespace, Name: "driverpilot-agent-" + profile}, ds)
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: ds.Name + "-", Namespace: agentNamespace,
			Labels: ds.Spec.Template.Labels, Annotations: ds.Spec.Template.Annotations},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "agent", Image: "driverpilot:test"}}},
	}
	if err := env.Client.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	markRunning(ctx, pod)
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), pod, client.GracePeriodSeconds(0)) })
	return pod
}

// A verified node whose agent pod cannot run its sensor is not True, in the pod's own words, and
// is True again once the pod runs; a node whose agent pod is gone is not True either.
func TestAgentPodIsPartOfTheTruth(t *testing.T) {
	createNodes(t, "podtruth", "podtruth-a")
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "podtruth-a")
	createProfile(t, profileFor("podtruth", "podtruth"))
	pod := agentPod(t, "podtruth", "podtruth-a")
	eventually(t, 20*time.Second, "verified", conditionIs(t, "podtruth-a", corev1.ConditionTrue, controllers.ReasonVerified))

	ctx := context.Background()
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = corev1.PodPending
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "agent", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
		Reason: "ImagePullBackOff", Message: `Back-off pulling image "registry.invalid/falcosecurity/falco:0.44.1": not found`}}}}
	if err := env.Client.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "not True with the pod's reason", func() error {
		if err := conditionIs(t, "podtruth-a", corev1.ConditionFalse, controllers.ReasonAgentNotRunning)(); err != nil {
			return err
		}
		if c := nodeCondition(t, "podtruth-a"); !strings.Contains(c.Message, "ImagePullBackOff") || !strings.Contains(c.Message, "not found") {
			return fmt.Errorf("message %q does not carry the pod's reason", c.Message)
		}
		return nil
	})
	markRunning(ctx, pod)
	eventually(t, 10*time.Second, "True again once the pod runs", conditionIs(t, "podtruth-a", corev1.ConditionTrue, controllers.ReasonVerified))

	if err := env.Client.Delete(ctx, pod, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "not True without an agent pod", func() error {
		if err := conditionIs(t, "podtruth-a", corev1.ConditionFalse, controllers.ReasonAgentNotRunning)(); err != nil {
			return err
		}
		if c := nodeCondition(t, "podtruth-a"); !strings.Contains(c.Message, "no agent pod") {
			return fmt.Errorf("message %q", c.Message)
		}
		return nil
	})
}

// Someone else's edit of the agent DaemonSet (a nodeSelector that schedules no pod) is reverted.
func TestAgentDaemonSetDriftIsRepaired(t *testing.T) {
	createNodes(t, "drift", "drift-a")
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "drift-a")
	createProfile(t, profileFor("drift", "drift"))
	ctx := context.Background()
	key := client.ObjectKey{Namespace: agentNamespace, Name: "driverpilot-agent-drift"}
	ds := &appsv1.DaemonSet{}
	eventually(t, 20*time.Second, "agent daemonset", func() error { return env.Client.Get(ctx, key, ds) })
	ds.Spec.Template.Spec.NodeSelector = map[string]string{"nowhere": "true"}
	if err := env.Client.Update(ctx, ds); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the hand edit reverted", func() error {
		if err := env.Client.Get(ctx, key, ds); err != nil {
			return err
		}
		if len(ds.Spec.Template.Spec.NodeSelector) != 0 {
			return fmt.Errorf("nodeSelector still %v", ds.Spec.Template.Spec.NodeSelector)
		}
		return nil
	})
}
