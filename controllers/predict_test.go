package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
	"github.com/driverpilot/driverpilot/internal/simagent"
)

// TestPredictedDrivers proves the predicted start (internal/prediction): of nodes that look
// alike to their kubelets, the first is probed and decided alone while the rest wait without a
// NodeSensor; once it proved its first choice, the rest are created with that driver, and each
// verifies with one agent write and no decision written after its creation. A node that looks
// alike but whose own facts choose another driver is not counted verified on the prediction: it
// re-verifies with its own choice. With learning off nothing is predicted.
func TestPredictedDrivers(t *testing.T) {
	const odd = "pred-a-odd" // looks like kind a, but has no BTF: its facts choose ebpf
	kernelOf := map[string]string{}
	var names []string
	for i := 0; i < 20; i++ {
		names = append(names, fmt.Sprintf("pred-a-%03d", i))
		kernelOf[names[len(names)-1]] = "6.1.0-28-cloud-amd64"
	}
	for i := 0; i < 8; i++ {
		names = append(names, fmt.Sprintf("pred-b-%03d", i))
		kernelOf[names[len(names)-1]] = "6.12.12-cloud-amd64"
	}
	names = append(names, odd)
	kernelOf[odd] = "6.1.0-28-cloud-amd64"
	createNodesFast(t, "pred", names, func(name string) corev1.NodeSystemInfo {
		return corev1.NodeSystemInfo{KernelVersion: kernelOf[name], OSImage: "Debian GNU/Linux 12 (bookworm)", Architecture: "amd64"}
	})

	var mu sync.Mutex
	firstSeen := map[string]time.Time{} // node -> when the agents first saw its NodeSensor
	passed := map[string]time.Time{}    // node -> its first passing verdict
	statusWrites := map[string]int{}    // node -> status writes of its agent
	ctx, cancel := context.WithCancel(context.Background())
	fleet, err := simagent.Start(ctx, env.Config, env.Scheme, names, simagent.Options{
		SelfTestDelay: 100 * time.Millisecond, NoHeartbeat: true, AgentVersion: agentVersion,
		Facts: func(node, bootID string) *v1alpha1.ProbeFacts {
			f := factsOn(bootID, kernelOf[node])
			if node == odd {
				no := v1alpha1.BoolFact{Answer: v1alpha1.AnswerNo, Source: "test"}
				f.BTF.Vmlinux, f.EBPF.TPBTF = no, no
			}
			return f
		},
		Verdict: func(node string, _ v1alpha1.NodeSensorSpec, honest *v1alpha1.SelfTestStatus) *v1alpha1.SelfTestStatus {
			if honest.Result == v1alpha1.SelfTestPassed {
				mu.Lock()
				if _, ok := passed[node]; !ok {
					passed[node] = time.Now()
				}
				mu.Unlock()
			}
			return honest
		},
		OnSensor: func(ns *v1alpha1.NodeSensor) {
			mu.Lock()
			if _, ok := firstSeen[ns.Name]; !ok {
				firstSeen[ns.Name] = time.Now()
			}
			mu.Unlock()
		},
		OnWrite: func(ns *v1alpha1.NodeSensor) {
			mu.Lock()
			statusWrites[ns.Name]++
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); fleet.Wait() })

	profile := &v1alpha1.SecurityProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "pred"},
		Spec: v1alpha1.SecurityProfileSpec{
			NodeSelector: selectorFor("pred"),
			Drivers:      v1alpha1.DriverPolicy{Preference: []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF}},
			Rollout:      v1alpha1.RolloutSpec{MaxUnavailable: ptr.To(intstr.FromString("50%"))},
		},
	}
	createProfile(t, profile)
	waitVerified(t, profile.Name, len(names), 60*time.Second)

	var list v1alpha1.NodeSensorList
	if err := env.Client.List(context.Background(), &list, client.MatchingLabels{controllers.ProfileLabel: profile.Name}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	predicted := map[string]int{}
	for _, ns := range list.Items {
		kind := ns.Name[:len("pred-a")]
		switch {
		case ns.Name == odd:
			// Predicted modern_ebpf, proven, then re-verified with its own facts' choice: no
			// failed attempt, and no prediction left on its current attempt.
			if ns.Spec.Driver != v1alpha1.DriverEBPF || ns.Spec.PredictedFrom != "" || len(ns.Spec.FailedAttempts) > 0 || ns.Spec.Attempt != 2 {
				t.Errorf("odd node: driver %s, attempt %d, predicted from %q, failed %v; want ebpf on attempt 2 after the prediction, no failure",
					ns.Spec.Driver, ns.Spec.Attempt, ns.Spec.PredictedFrom, ns.Spec.FailedAttempts)
			}
		case ns.Spec.PredictedFrom == "":
			// The first of its kind: probed alone, decided on its own facts.
			if ns.Generation < 2 || ns.Spec.Driver != v1alpha1.DriverModernEBPF {
				t.Errorf("node %s: not predicted, yet generation %d, driver %s", ns.Name, ns.Generation, ns.Spec.Driver)
			}
		default:
			predicted[kind]++
			from := ns.Spec.PredictedFrom
			if !strings.HasPrefix(from, kind) || ns.Spec.Driver != v1alpha1.DriverModernEBPF || ns.Spec.Attempt != 1 {
				t.Errorf("node %s: predicted from %s, driver %s, attempt %d", ns.Name, from, ns.Spec.Driver, ns.Spec.Attempt)
			}
			// Created with its decision: no spec write since, and one agent write in all.
			if ns.Generation != 1 || statusWrites[ns.Name] != 1 {
				t.Errorf("node %s: generation %d and %d agent status writes, want 1 and 1", ns.Name, ns.Generation, statusWrites[ns.Name])
			}
			// It waited, without a NodeSensor, for the node it was predicted from to pass.
			if p, ok := passed[from]; !ok || firstSeen[ns.Name].Before(p) {
				t.Errorf("node %s existed %s before %s passed its self-test", ns.Name, p.Sub(firstSeen[ns.Name]), from)
			}
		}
	}
	// Every node but the first of each kind (and the odd one) was predicted.
	if predicted["pred-a"] != 19 || predicted["pred-b"] != 7 {
		t.Errorf("predicted nodes per kind %v, want pred-a 19, pred-b 7", predicted)
	}
	reverified := false
	var events corev1.EventList
	if err := env.Client.List(context.Background(), &events); err != nil {
		t.Fatal(err)
	}
	for _, e := range events.Items {
		if strings.Contains(e.Message, odd) && strings.Contains(e.Message, "was predicted from node pred-a-000, but its own facts choose ebpf") {
			reverified = true
		}
	}
	if !reverified {
		t.Error("no event says why the odd node re-verified")
	}
}

// TestNoPredictionWithoutLearning: with spec.fleet.learning Off every node is probed and
// decided alone, at once.
func TestNoPredictionWithoutLearning(t *testing.T) {
	var names []string
	for i := 0; i < 6; i++ {
		names = append(names, fmt.Sprintf("alone-%d", i))
	}
	createNodesFast(t, "alone", names, func(string) corev1.NodeSystemInfo {
		return corev1.NodeSystemInfo{KernelVersion: "6.1.0-28-cloud-amd64", OSImage: "Debian GNU/Linux 12 (bookworm)", Architecture: "amd64"}
	})
	ctx, cancel := context.WithCancel(context.Background())
	fleet, err := simagent.Start(ctx, env.Config, env.Scheme, names, simagent.Options{SelfTestDelay: 100 * time.Millisecond, NoHeartbeat: true, AgentVersion: agentVersion})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); fleet.Wait() })
	profile := &v1alpha1.SecurityProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "alone"},
		Spec: v1alpha1.SecurityProfileSpec{
			NodeSelector: selectorFor("alone"),
			Fleet:        v1alpha1.FleetSpec{Learning: v1alpha1.FleetLearningOff},
			Rollout:      v1alpha1.RolloutSpec{MaxUnavailable: ptr.To(intstr.FromInt32(6))},
		},
	}
	createProfile(t, profile)
	waitVerified(t, profile.Name, len(names), 60*time.Second)
	var list v1alpha1.NodeSensorList
	if err := env.Client.List(context.Background(), &list, client.MatchingLabels{controllers.ProfileLabel: profile.Name}); err != nil {
		t.Fatal(err)
	}
	for _, ns := range list.Items {
		if ns.Spec.PredictedFrom != "" || ns.Generation < 2 {
			t.Errorf("node %s: predicted from %q, generation %d: learning is off", ns.Name, ns.Spec.PredictedFrom, ns.Generation)
		}
	}
}

// waitVerified waits until the profile's status counts n nodes, all verified under its spec.
func waitVerified(t *testing.T, profile string, n int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("%d nodes of %s verified", n, profile), func() error {
		p := &v1alpha1.SecurityProfile{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: profile}, p); err != nil {
			return err
		}
		if s := p.Status.Nodes; s.Selected != int32(n) || s.Verified != int32(n) || s.UpToDate != int32(n) {
			return fmt.Errorf("nodes %+v", s)
		}
		return nil
	})
}

// TestPredictionDoesNotWaitOnASilentFirstNode: the first node of a kind, probed alone, has no
// agent. Its kind waits uncreated for at most a heartbeat timeout; then its nodes are probed and
// decided alone, and all but the silent one are verified.
func TestPredictionDoesNotWaitOnASilentFirstNode(t *testing.T) {
	names := []string{"silent-first-0", "silent-first-1", "silent-first-2", "silent-first-3"}
	createNodesFast(t, "silent-first", names, func(string) corev1.NodeSystemInfo {
		return corev1.NodeSystemInfo{KernelVersion: "6.1.0-28-cloud-amd64", OSImage: "Debian GNU/Linux 12 (bookworm)", Architecture: "amd64"}
	})
	ctx, cancel := context.WithCancel(context.Background())
	// No agent on the first node (in name order, the one probed alone).
	fleet, err := simagent.Start(ctx, env.Config, env.Scheme, names[1:], simagent.Options{SelfTestDelay: 100 * time.Millisecond, NoHeartbeat: true, AgentVersion: agentVersion})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); fleet.Wait() })
	createProfile(t, &v1alpha1.SecurityProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "silent-first"},
		Spec:       v1alpha1.SecurityProfileSpec{NodeSelector: selectorFor("silent-first")},
	})
	// While the first node may still answer, its kind waits without NodeSensors.
	time.Sleep(heartbeatTimeout / 2)
	var list v1alpha1.NodeSensorList
	if err := env.Client.List(context.Background(), &list, client.MatchingLabels{controllers.ProfileLabel: "silent-first"}); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].Name != names[0] {
		t.Errorf("%d NodeSensors within the first node's grace, want only %s's", len(list.Items), names[0])
	}
	eventually(t, 30*time.Second, "the silent node's kind verified without it", func() error {
		p := &v1alpha1.SecurityProfile{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "silent-first"}, p); err != nil {
			return err
		}
		if s := p.Status.Nodes; s.Selected != 4 || s.Verified != 3 {
			return fmt.Errorf("nodes %+v", s)
		}
		return nil
	})
}

// TestPredictionWithdrawnWhenNoAgentAnswers: a node created with a predicted driver whose agent
// does not answer holds its rollout slot for one heartbeat timeout; then the prediction is
// withdrawn (its slot goes to the next node), and an agent that comes later only probes: the
// node is decided on its own facts, on a new attempt.
func TestPredictionWithdrawnWhenNoAgentAnswers(t *testing.T) {
	names := []string{"late-agent-0", "late-agent-1", "late-agent-2"}
	const late = "late-agent-1" // in name order the first predicted node
	createNodesFast(t, "late-agent", names, func(string) corev1.NodeSystemInfo {
		return corev1.NodeSystemInfo{KernelVersion: "6.1.0-28-cloud-amd64", OSImage: "Debian GNU/Linux 12 (bookworm)", Architecture: "amd64"}
	})
	ctx, cancel := context.WithCancel(context.Background())
	fleet, err := simagent.Start(ctx, env.Config, env.Scheme, []string{names[0], names[2]},
		simagent.Options{SelfTestDelay: 100 * time.Millisecond, NoHeartbeat: true, AgentVersion: agentVersion})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); fleet.Wait() })
	createProfile(t, &v1alpha1.SecurityProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "late-agent"},
		Spec: v1alpha1.SecurityProfileSpec{NodeSelector: selectorFor("late-agent"),
			Rollout: v1alpha1.RolloutSpec{MaxUnavailable: ptr.To(intstr.FromInt32(1))}},
	})
	get := func(name string) (*v1alpha1.NodeSensor, error) {
		ns := &v1alpha1.NodeSensor{}
		return ns, env.Client.Get(context.Background(), client.ObjectKey{Name: name}, ns)
	}
	eventually(t, 20*time.Second, "the late node's prediction withdrawn and the next node verified", func() error {
		ns, err := get(late)
		if err != nil {
			return err
		}
		if ns.Spec.Driver != "" || ns.Spec.PredictedFrom != names[0] || ns.Spec.Attempt != 1 {
			return fmt.Errorf("late node: driver %q, predicted from %q, attempt %d", ns.Spec.Driver, ns.Spec.PredictedFrom, ns.Spec.Attempt)
		}
		next, err := get(names[2])
		if err != nil {
			return err
		}
		if st := next.Status.SelfTest; st == nil || st.Result != v1alpha1.SelfTestPassed {
			return fmt.Errorf("%s has no passing verdict yet", names[2])
		}
		return nil
	})
	fleet.Add(late, "boot-"+late)
	eventually(t, 20*time.Second, "the late node decided on its own facts and verified", func() error {
		ns, err := get(late)
		if err != nil {
			return err
		}
		st := ns.Status.SelfTest
		if ns.Spec.Attempt != 2 || ns.Spec.PredictedFrom != "" || st == nil || st.Attempt != 2 || st.Result != v1alpha1.SelfTestPassed {
			return fmt.Errorf("late node: attempt %d, predicted from %q, verdict %+v", ns.Spec.Attempt, ns.Spec.PredictedFrom, st)
		}
		return nil
	})
	waitVerified(t, "late-agent", 3, 20*time.Second)
}
