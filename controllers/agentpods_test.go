package controllers_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
)

const templateHashAnnotation = "security.driverpilot.io/template-hash"

// podSim plays what envtest lacks for one profile's agent DaemonSet: the DaemonSet controller
// (a pod per node from the DaemonSet's current template, created once the node has none) and
// the kubelet (a deleted pod's agent stops at once, the pod goes after a grace period, and the
// new pod's agent starts after a startup delay and tests again, running the template's sensor).
// It records every deletion the manager makes.
type podSim struct {
	mu sync.Mutex
	// deleted lists the nodes whose pod was deleted, in order.
	deleted []string
	// log says what happened, for failure messages.
	log []string
	// version, when set, is the agent version a new pod runs (an operator upgrade).
	version string
}

func (s *podSim) deletions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.deleted...)
}

func (s *podSim) logs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

func simulateDaemonSet(t *testing.T, profile string, agents map[string]*fakeAgent) *podSim {
	t.Helper()
	sim := &podSim{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		seen := map[string]bool{} // pods whose deletion was recorded
		started := map[string]bool{}
		for ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
			ds := &appsv1.DaemonSet{}
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: agentNamespace, Name: "driverpilot-agent-" + profile}, ds); err != nil {
				continue
			}
			var pods corev1.PodList
			if err := env.Client.List(ctx, &pods, client.InNamespace(agentNamespace), client.MatchingLabels{controllers.ProfileLabel: profile}); err != nil {
				continue
			}
			has := map[string]bool{}
			for i := range pods.Items {
				pod := &pods.Items[i]
				has[pod.Spec.NodeName] = true
				if pod.DeletionTimestamp == nil || seen[pod.Name+string(pod.UID)] {
					continue
				}
				seen[pod.Name+string(pod.UID)] = true
				node := pod.Spec.NodeName
				sim.mu.Lock()
				sim.deleted = append(sim.deleted, node)
				sim.log = append(sim.log, fmt.Sprintf("%s deleted %s", time.Now().Format("15:04:05.000"), node))
				sim.mu.Unlock()
				if a := agents[node]; a != nil {
					a.stop() // SIGTERM
				}
				go func() {
					time.Sleep(300 * time.Millisecond) // the grace period
					_ = env.Client.Delete(context.Background(), pod, client.GracePeriodSeconds(0))
				}()
			}
			for node, a := range agents {
				if has[node] {
					continue
				}
				kind := v1alpha1.SensorBuiltin
				for _, c := range ds.Spec.Template.Spec.Containers {
					if c.Name == "falco" {
						kind = v1alpha1.SensorFalco
					}
				}
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{
						GenerateName: ds.Name + "-", Namespace: agentNamespace,
						Labels: ds.Spec.Template.Labels, Annotations: ds.Spec.Template.Annotations,
					},
					Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "agent", Image: "driverpilot:test"}}},
				}
				if err := env.Client.Create(ctx, pod); err != nil {
					continue
				}
				if !started[node] {
					started[node] = true // the first pod: its agent runs already
					markRunning(ctx, pod)
					continue
				}
				sim.mu.Lock()
				version := sim.version
				sim.mu.Unlock()
				go func() {
					time.Sleep(500 * time.Millisecond) // scheduling, image, container start, probe
					if version != "" {
						a.upgrade(version)
					}
					a.restart(kind)
					markRunning(ctx, pod)
				}()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		var pods corev1.PodList
		_ = env.Client.List(context.Background(), &pods, client.InNamespace(agentNamespace), client.MatchingLabels{controllers.ProfileLabel: profile})
		for i := range pods.Items {
			_ = env.Client.Delete(context.Background(), &pods.Items[i], client.GracePeriodSeconds(0))
		}
	})
	return sim
}

// markRunning reports the pod as its kubelet would once its container runs and is ready: a node
// is verified only while its agent pod runs.
func markRunning(ctx context.Context, pod *corev1.Pod) {
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase:             corev1.PodRunning,
		Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "agent", Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}},
	}
	_ = env.Client.Status().Update(ctx, pod)
}

// replacingWatch samples, while a template change rolls, how many of the nodes had their agent
// pod deleted and are not yet verified again (done), and whether any pod but the canary's went
// before the canary was verified again.
type replacingWatch struct {
	sim        *podSim
	stop       func()
	mu         sync.Mutex
	max        int
	violations []string
}

func watchReplacing(t *testing.T, sim *podSim, canary string, nodes []string, done func(*v1alpha1.NodeSensor) bool) *replacingWatch {
	w := &replacingWatch{sim: sim}
	ctx, cancel := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			s := snapshot(ctx, nodes)
			if len(s) != len(nodes) {
				continue
			}
			count := 0
			for _, n := range sim.deletions() {
				if s[n] == nil {
					continue // not one of these nodes
				}
				if n != canary && !done(s[canary]) {
					w.mu.Lock()
					w.violations = append(w.violations, n+"'s pod was replaced before the canary "+canary+" was verified again")
					w.mu.Unlock()
				}
				if !done(s[n]) {
					count++
				}
			}
			w.mu.Lock()
			w.max = max(w.max, count)
			w.mu.Unlock()
		}
	}()
	var once sync.Once
	w.stop = func() { once.Do(func() { cancel(); <-sampled }) }
	t.Cleanup(w.stop)
	return w
}

// check stops the watch and fails the test on a violation or more than maxUnavailable at once.
func (w *replacingWatch) check(t *testing.T, maxUnavailable int) {
	t.Helper()
	w.stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.violations) > 0 {
		t.Errorf("%s (deletions %v)", w.violations[0], w.sim.deletions())
	}
	if w.max > maxUnavailable {
		t.Errorf("%d nodes had their agent pod replaced at once, maxUnavailable is %d (%v)", w.max, maxUnavailable, w.sim.logs())
	}
	if w.max == 0 {
		t.Errorf("never saw a pod being replaced: the sampler is broken")
	}
}

// TestSensorChangeReplacesAgentPodsPaced (issue 11, item 1): the manager, not the DaemonSet,
// replaces agent pods. A change that leaves the pod template alone deletes no pod. Builtin to
// Falco: the pod of a node that is not protected is replaced at once; proven nodes' pods are
// replaced canary first and never more than maxUnavailable at once (a node counts from its pod's
// deletion until it is verified by the new sensor), and proven nodes stay True meanwhile.
func TestSensorChangeReplacesAgentPodsPaced(t *testing.T) {
	proven := []string{"pods-a", "pods-b", "pods-c"}
	nodes := append(append([]string(nil), proven...), "pods-x")
	createNodes(t, "pods", nodes...)
	p := profileFor("pods", "pods")
	p.Spec.Rollout.MaxUnavailable = ptr.To(intstr.FromInt32(1))
	p.Spec.Rollout.Canary = &v1alpha1.CanarySpec{Count: ptr.To[int32](1)} // pods-a
	agents := startAgents(t, 200*time.Millisecond, always(v1alpha1.SelfTestPassed), proven...)
	for n, a := range startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestFailed), "pods-x") {
		agents[n] = a
	}
	for _, a := range agents {
		a.restart(v1alpha1.SensorBuiltin)
	}
	sim := simulateDaemonSet(t, "pods", agents)
	createProfile(t, p)
	for _, n := range proven {
		eventually(t, 30*time.Second, n+" verified", conditionIs(t, n, corev1.ConditionTrue, controllers.ReasonVerified))
	}
	eventually(t, 30*time.Second, "pods-x has no supported driver", conditionIs(t, "pods-x", corev1.ConditionFalse, controllers.ReasonNoSupportedDriver))
	ds := &appsv1.DaemonSet{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: agentNamespace, Name: "driverpilot-agent-pods"}, ds); err != nil {
		t.Fatal(err)
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.OnDeleteDaemonSetStrategyType {
		t.Errorf("agent DaemonSet update strategy %s: the DaemonSet would replace pods at its own pace", ds.Spec.UpdateStrategy.Type)
	}
	if ds.Spec.Template.Annotations[templateHashAnnotation] == "" {
		t.Errorf("the pod template does not say which template it is")
	}

	// A change that leaves the pod template alone costs no pod.
	editProfile(t, "pods", func(p *v1alpha1.SecurityProfile) {
		p.Spec.SelfTest.Interval = &metav1.Duration{Duration: 12 * time.Hour}
	})
	time.Sleep(1500 * time.Millisecond)
	if d := sim.deletions(); len(d) > 0 {
		t.Fatalf("a change that leaves the pod template alone deleted agent pods on %v", d)
	}

	// Between the old pod's end and the new pod's start no sensor runs: the node says so.
	lost, gap, stopReady := watchReadyAllowing(t, proven, controllers.ReasonAgentNotRunning)
	replacing := watchReplacing(t, sim, "pods-a", proven, func(ns *v1alpha1.NodeSensor) bool { return provenBySensor(ns, v1alpha1.SensorFalco) })
	editProfile(t, "pods", func(p *v1alpha1.SecurityProfile) {
		p.Spec.Sensor = v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falcosecurity/falco:0.42.1"}
	})
	eventually(t, 5*time.Second, "the pod of the node that is not protected replaced at once", func() error {
		// At once: with the canary's, before any other proven node's.
		if d := sim.deletions(); !slices.Contains(d, "pods-x") || slices.Contains(d, "pods-b") || slices.Contains(d, "pods-c") {
			return fmt.Errorf("deletions %v", d)
		}
		return nil
	})
	eventually(t, 60*time.Second, "every proven node verified by Falco in a new pod", func() error {
		for _, n := range proven {
			ns, err := getSensor(n)
			if err != nil {
				return err
			}
			if !provenBySensor(ns, v1alpha1.SensorFalco) {
				return fmt.Errorf("%s: sensor %s, attempt %d, verdict %+v; pods deleted on %v", n, ns.Spec.Sensor.Kind, ns.Spec.Attempt, ns.Status.SelfTest, sim.deletions())
			}
		}
		return nil
	})
	stopReady()
	if msg := lost.Load().(string); msg != "" {
		t.Errorf("a proven node left RuntimeSecurityReady=True while its agent pod was replaced, for another reason than its pod: %s", msg)
	}
	if !gap.Load() {
		t.Error("no node was AgentNotRunning while its agent pod was replaced: a node stayed True with no agent pod running")
	}
	replacing.check(t, 1)
	d := sim.deletions()
	if len(d) != 4 || fmt.Sprint(d[2:]) != "[pods-b pods-c]" || !slices.Contains(d[:2], "pods-a") || !slices.Contains(d[:2], "pods-x") {
		t.Errorf("pods deleted on %v, want pods-x and the canary pods-a, then pods-b and pods-c (each once)", d)
	}
	for _, n := range nodes {
		ns, _ := getSensor(n)
		if n != "pods-x" && (len(ns.Spec.FailedAttempts) > 0 || ns.Spec.Driver != v1alpha1.DriverModernEBPF) {
			t.Errorf("%s: the pod replacement was recorded against the driver: driver %s, failed %+v", n, ns.Spec.Driver, ns.Spec.FailedAttempts)
		}
		if err := findEvent("NodeSensor", n, controllers.ReasonAgentReplaced, "outdated pod template"); err != nil {
			t.Error(err)
		}
	}
}

// TestAgentUpgradeReplacesPodsPaced (issue 11, item 1): an operator upgrade changes the agent
// pod template. The nodes proven by the old agent keep it until the rollout replaces their pod,
// canary first and one at a time; each is then re-verified once by the new agent, and stays True.
func TestAgentUpgradeReplacesPodsPaced(t *testing.T) {
	nodes := []string{"podup-a", "podup-b", "podup-c"}
	createNodes(t, "podup", nodes...)
	p := profileFor("podup", "podup")
	p.Spec.Rollout.MaxUnavailable = ptr.To(intstr.FromInt32(1))
	p.Spec.Rollout.Canary = &v1alpha1.CanarySpec{Count: ptr.To[int32](1)} // podup-a
	agents := startAgents(t, 200*time.Millisecond, always(v1alpha1.SelfTestPassed), nodes...)
	for _, a := range agents {
		a.upgrade("0.1.0")
	}
	sim := simulateDaemonSet(t, "podup", agents)
	createProfile(t, p)
	for _, n := range nodes {
		eventually(t, 30*time.Second, n+" verified by the old agent", conditionIs(t, n, corev1.ConditionTrue, controllers.ReasonVerified))
	}
	time.Sleep(500 * time.Millisecond)
	if d := sim.deletions(); len(d) > 0 {
		t.Fatalf("pods of the current template were replaced: %v", d)
	}
	before := attemptsOf(t, nodes)

	lost, gap, stopReady := watchReadyAllowing(t, nodes, controllers.ReasonAgentNotRunning)
	maxInFlight, stopInFlight := watchInFlight(t, nodes)
	replacing := watchReplacing(t, sim, "podup-a", nodes, func(ns *v1alpha1.NodeSensor) bool {
		st := ns.Status.SelfTest
		return st != nil && st.AgentVersion == agentVersion && st.Attempt == ns.Spec.Attempt && st.Result == v1alpha1.SelfTestPassed
	})
	sim.mu.Lock()
	sim.version = agentVersion
	sim.mu.Unlock()
	// The old manager's pods: another template (here: none recorded).
	var pods corev1.PodList
	if err := env.Client.List(context.Background(), &pods, client.InNamespace(agentNamespace), client.MatchingLabels{controllers.ProfileLabel: "podup"}); err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		pod := &pods.Items[i]
		base := pod.DeepCopy()
		delete(pod.Annotations, templateHashAnnotation)
		if err := env.Client.Patch(context.Background(), pod, client.MergeFrom(base)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 60*time.Second, "every node re-verified by the new agent", func() error {
		for _, n := range nodes {
			ns, err := getSensor(n)
			if err != nil {
				return err
			}
			st := ns.Status.SelfTest
			if st == nil || st.AgentVersion != agentVersion || st.Attempt != ns.Spec.Attempt || st.Result != v1alpha1.SelfTestPassed {
				return fmt.Errorf("%s: attempt %d, verdict %+v; pods deleted on %v", n, ns.Spec.Attempt, st, sim.deletions())
			}
		}
		return nil
	})
	stopInFlight()
	stopReady()
	if msg := lost.Load().(string); msg != "" {
		t.Errorf("a node left RuntimeSecurityReady=True during the upgrade, for another reason than its pod: %s", msg)
	}
	if !gap.Load() {
		t.Error("no node was AgentNotRunning while its agent pod was replaced")
	}
	if got := maxInFlight.Load(); got > 1 {
		t.Errorf("%d nodes re-verified at once, maxUnavailable is 1", got)
	}
	replacing.check(t, 1)
	if d := sim.deletions(); fmt.Sprint(d) != "[podup-a podup-b podup-c]" {
		t.Errorf("pods deleted on %v, want each once, the canary podup-a first (%v)", d, sim.logs())
	}
	for n, a := range attemptsOf(t, nodes) {
		if a != before[n]+1 {
			t.Errorf("%s: attempt %d after the upgrade, want %d (one re-verification)", n, a, before[n]+1)
		}
	}
}
