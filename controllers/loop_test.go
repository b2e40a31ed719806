package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
)

func profileFor(name, testLabel string) *v1alpha1.SecurityProfile {
	return &v1alpha1.SecurityProfile{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.SecurityProfileSpec{NodeSelector: selectorFor(testLabel)},
	}
}

// watchInFlight samples the NodeSensors of the given nodes until stop and records the largest
// number of nodes verifying at once (a driver assigned, its verdict not in yet).
func watchInFlight(t *testing.T, nodes []string) (max *atomic.Int32, stop func()) {
	max = &atomic.Int32{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			var n int32
			for _, ns := range snapshot(ctx, nodes) {
				st := ns.Status.SelfTest
				if ns.Spec.Driver != "" && (st == nil || st.Attempt != ns.Spec.Attempt) {
					n++
				}
			}
			if n > max.Load() {
				max.Store(n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return max, func() { cancel(); <-done }
}

// snapshot lists the NodeSensors of the given nodes in one request: one consistent moment, so
// a sample never counts a node as still verifying after another one started in its place.
func snapshot(ctx context.Context, nodes []string) map[string]*v1alpha1.NodeSensor {
	var list v1alpha1.NodeSensorList
	if err := env.Client.List(ctx, &list); err != nil {
		return nil
	}
	out := map[string]*v1alpha1.NodeSensor{}
	for i := range list.Items {
		for _, n := range nodes {
			if list.Items[i].Name == n {
				out[n] = &list.Items[i]
			}
		}
	}
	return out
}

func TestRolloutVerifiesEveryNodeWithinMaxUnavailable(t *testing.T) {
	nodes := []string{"paced-a", "paced-b", "paced-c", "paced-d", "paced-e"}
	createNodes(t, "paced", nodes...)
	p := profileFor("paced", "paced")
	p.Spec.Rollout.MaxUnavailable = ptr.To(intstr.FromInt32(2))
	p.Spec.Enforcement.Taint = true
	maxInFlight, stop := watchInFlight(t, nodes)
	startAgents(t, 300*time.Millisecond, always(v1alpha1.SelfTestPassed), nodes...)
	createProfile(t, p)

	for _, n := range nodes {
		eventually(t, 30*time.Second, n+" verified", conditionIs(t, n, corev1.ConditionTrue, controllers.ReasonVerified))
	}
	stop()
	if got := maxInFlight.Load(); got > 2 {
		t.Errorf("%d nodes verified at once, maxUnavailable is 2", got)
	}
	if got := maxInFlight.Load(); got < 1 {
		t.Errorf("never saw a node verifying: the sampler is broken")
	}
	c := nodeCondition(t, "paced-a")
	if !strings.Contains(c.Message, "modern_ebpf") {
		t.Errorf("condition message does not name the driver: %q", c.Message)
	}
	// Verified nodes lose the unverified taint.
	eventually(t, 10*time.Second, "taints removed", untainted(nodes))
	eventually(t, 10*time.Second, "profile status", func() error {
		got := &v1alpha1.SecurityProfile{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(p), got); err != nil {
			return err
		}
		st := got.Status
		if st.Nodes.Selected != 5 || st.Nodes.Verified != 5 || st.ObservedGeneration != got.Generation {
			return fmt.Errorf("status %+v", st.Nodes)
		}
		if len(st.Drivers) != 1 || st.Drivers[0].Driver != v1alpha1.DriverModernEBPF || st.Drivers[0].Nodes != 5 {
			return fmt.Errorf("drivers %+v", st.Drivers)
		}
		if !meta.IsStatusConditionTrue(st.Conditions, controllers.ConditionReady) {
			return fmt.Errorf("Ready not True: %+v", st.Conditions)
		}
		return nil
	})
	// The metrics say the same: five verified nodes on modern_ebpf, and self-test durations observed.
	eventually(t, 10*time.Second, "metrics", func() error {
		families, err := metrics.Registry.Gather()
		if err != nil {
			return err
		}
		var verified, durations float64
		for _, f := range families {
			for _, m := range f.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				switch {
				case f.GetName() == "driverpilot_nodes" && labels["profile"] == "paced" && labels["phase"] == "Verified" && labels["driver"] == "modern_ebpf":
					verified = m.GetGauge().GetValue()
				case f.GetName() == "driverpilot_selftest_duration_seconds" && labels["driver"] == "modern_ebpf":
					durations += float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
		if verified != 5 || durations < 5 {
			return fmt.Errorf("driverpilot_nodes verified=%v, self-test durations observed=%v", verified, durations)
		}
		return nil
	})
	ns := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "paced-a"}, ns); err != nil {
		t.Fatal(err)
	}
	if len(ns.Spec.Reasons) == 0 {
		t.Errorf("decision has no reasons for the drivers it skipped: %+v", ns.Spec)
	}
	if len(ns.OwnerReferences) != 1 || ns.OwnerReferences[0].Kind != "Node" {
		t.Errorf("node sensor not owned by its node: %+v", ns.OwnerReferences)
	}
}

func TestCanaryGatesTheRollout(t *testing.T) {
	nodes := []string{"canary-a", "canary-b", "canary-c"}
	createNodes(t, "canary", nodes...)
	// The canary is the last by name, so name order alone would not start it first.
	canary := &corev1.Node{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "canary-c"}, canary); err != nil {
		t.Fatal(err)
	}
	canary.Labels["canary"] = "true"
	if err := env.Client.Update(context.Background(), canary); err != nil {
		t.Fatal(err)
	}
	p := profileFor("canary", "canary")
	p.Spec.Rollout.MaxUnavailable = ptr.To(intstr.FromString("100%"))
	p.Spec.Rollout.Canary = &v1alpha1.CanarySpec{NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"canary": "true"}}}
	startAgents(t, 1500*time.Millisecond, always(v1alpha1.SelfTestPassed), nodes...)
	createProfile(t, p)

	// While the canary verifies, the others get no driver.
	eventually(t, 10*time.Second, "canary assigned", func() error {
		ns := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "canary-c"}, ns); err != nil {
			return err
		}
		if ns.Spec.Driver == "" {
			return fmt.Errorf("canary has no driver yet")
		}
		return nil
	})
	for _, n := range []string{"canary-a", "canary-b"} {
		ns := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: n}, ns); err != nil {
			t.Fatal(err)
		}
		if ns.Spec.Driver != "" {
			t.Errorf("%s got driver %s before the canary was verified", n, ns.Spec.Driver)
		}
	}
	eventually(t, 10*time.Second, "profile says it waits for the canary", func() error {
		got := &v1alpha1.SecurityProfile{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(p), got); err != nil {
			return err
		}
		c := meta.FindStatusCondition(got.Status.Conditions, controllers.ConditionProgressing)
		if c == nil || !strings.Contains(c.Message, "canary") {
			return fmt.Errorf("Progressing: %+v", c)
		}
		return nil
	})
	for _, n := range nodes {
		eventually(t, 30*time.Second, n+" verified", conditionIs(t, n, corev1.ConditionTrue, controllers.ReasonVerified))
	}
}

func TestFallbackChainEndsInNoSupportedDriver(t *testing.T) {
	createNodes(t, "fallback", "fallback-a")
	p := profileFor("fallback", "fallback")
	// Falco 0.42 offers all three drivers; the typical node allows all three.
	p.Spec.Sensor = v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falcosecurity/falco:0.42.1"}
	p.Spec.Drivers.Preference = []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF, v1alpha1.DriverKmod}
	var tried []v1alpha1.Driver
	startAgents(t, 50*time.Millisecond, func(d v1alpha1.Driver) v1alpha1.SelfTestResult {
		tried = append(tried, d)
		return v1alpha1.SelfTestFailed
	}, "fallback-a")
	createProfile(t, p)

	eventually(t, 30*time.Second, "no supported driver", func() error {
		if err := conditionIs(t, "fallback-a", corev1.ConditionFalse, controllers.ReasonNoSupportedDriver)(); err != nil {
			ns := &v1alpha1.NodeSensor{}
			_ = env.Client.Get(context.Background(), client.ObjectKey{Name: "fallback-a"}, ns)
			return fmt.Errorf("%w; node sensor spec %+v", err, ns.Spec)
		}
		return nil
	})
	ns := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "fallback-a"}, ns); err != nil {
		t.Fatal(err)
	}
	var failed []v1alpha1.Driver
	for _, f := range ns.Spec.FailedAttempts {
		failed = append(failed, f.Driver)
		if !strings.Contains(f.Reason, "CheckTimedOut") {
			t.Errorf("failed attempt %s does not carry the self-test's reason: %q", f.Driver, f.Reason)
		}
	}
	want := []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF, v1alpha1.DriverKmod}
	if fmt.Sprint(failed) != fmt.Sprint(want) {
		t.Errorf("fallback chain %v, want %v", failed, want)
	}
	if ns.Spec.Driver != "" || ns.Spec.Attempt != 4 {
		t.Errorf("final decision driver=%q attempt=%d, want none at attempt 4", ns.Spec.Driver, ns.Spec.Attempt)
	}
	c := nodeCondition(t, "fallback-a")
	for _, d := range want {
		if !strings.Contains(c.Message, string(d)) {
			t.Errorf("condition message does not explain %s: %q", d, c.Message)
		}
	}
	eventually(t, 10*time.Second, "profile degraded", func() error {
		got := &v1alpha1.SecurityProfile{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(p), got); err != nil {
			return err
		}
		if got.Status.Nodes.Failed != 1 || !meta.IsStatusConditionTrue(got.Status.Conditions, controllers.ConditionDegraded) {
			return fmt.Errorf("status %+v", got.Status)
		}
		return nil
	})
}

func TestConflictingProfilesHaveOneDeterministicWinner(t *testing.T) {
	createNodes(t, "conflict", "conflict-a")
	older := profileFor("conflict-older", "conflict")
	createProfile(t, older)
	time.Sleep(1100 * time.Millisecond) // creation timestamps have one-second resolution
	newer := profileFor("conflict-newer", "conflict")
	createProfile(t, newer)
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "conflict-a")

	eventually(t, 20*time.Second, "older profile governs the node", func() error {
		ns := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "conflict-a"}, ns); err != nil {
			return err
		}
		if ns.Spec.Profile != "conflict-older" {
			return fmt.Errorf("node sensor follows %s", ns.Spec.Profile)
		}
		return nil
	})
	eventually(t, 20*time.Second, "loser names the conflict", func() error {
		got := &v1alpha1.SecurityProfile{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(newer), got); err != nil {
			return err
		}
		c := meta.FindStatusCondition(got.Status.Conditions, controllers.ConditionConflict)
		if c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "conflict-older") || !strings.Contains(c.Message, "conflict-a") {
			return fmt.Errorf("Conflict condition: %+v", c)
		}
		return nil
	})
	eventually(t, 20*time.Second, "node verified", conditionIs(t, "conflict-a", corev1.ConditionTrue, controllers.ReasonVerified))

	// When the winner goes, the other profile takes the node over.
	if err := env.Client.Delete(context.Background(), older); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "newer profile adopts the node", func() error {
		ns := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "conflict-a"}, ns); err != nil {
			return err
		}
		if ns.Spec.Profile != "conflict-newer" {
			return fmt.Errorf("node sensor follows %s", ns.Spec.Profile)
		}
		return conditionIs(t, "conflict-a", corev1.ConditionTrue, controllers.ReasonVerified)()
	})
}

func TestRelabelledNodeLeavesTheProfile(t *testing.T) {
	createNodes(t, "relabel", "relabel-a", "relabel-b")
	p := profileFor("relabel", "relabel")
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "relabel-a", "relabel-b")
	createProfile(t, p)
	eventually(t, 20*time.Second, "relabel-a verified", conditionIs(t, "relabel-a", corev1.ConditionTrue, controllers.ReasonVerified))
	eventually(t, 20*time.Second, "relabel-b verified", conditionIs(t, "relabel-b", corev1.ConditionTrue, controllers.ReasonVerified))

	n := &corev1.Node{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "relabel-b"}, n); err != nil {
		t.Fatal(err)
	}
	n.Labels["test"] = "elsewhere"
	if err := env.Client.Update(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "node sensor removed and condition cleared", func() error {
		err := env.Client.Get(context.Background(), client.ObjectKey{Name: "relabel-b"}, &v1alpha1.NodeSensor{})
		if err == nil {
			return fmt.Errorf("node sensor still exists")
		}
		if c := nodeCondition(t, "relabel-b"); c != nil {
			return fmt.Errorf("condition still on node: %+v", c)
		}
		return nil
	})
	if err := conditionIs(t, "relabel-a", corev1.ConditionTrue, controllers.ReasonVerified)(); err != nil {
		t.Error(err)
	}
}

func TestExpiredHeartbeatTurnsNodeUnknown(t *testing.T) {
	createNodes(t, "heartbeat", "heartbeat-a")
	p := profileFor("heartbeat", "heartbeat")
	agents := startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "heartbeat-a")
	createProfile(t, p)
	eventually(t, 20*time.Second, "verified", conditionIs(t, "heartbeat-a", corev1.ConditionTrue, controllers.ReasonVerified))
	agents["heartbeat-a"].stopHeartbeat()
	eventually(t, 3*heartbeatTimeout+5*time.Second, "unknown", conditionIs(t, "heartbeat-a", corev1.ConditionUnknown, controllers.ReasonHeartbeatExpired))
}

// An agent that heartbeats through its Lease only (its NodeSensor status is not written after the
// verdict) stays verified well past the heartbeat timeout, turns Unknown when the Lease is no
// longer renewed, and comes back when it is renewed again.
func TestLeaseHeartbeatKeepsTheNodeAlive(t *testing.T) {
	createNodes(t, "lease", "lease-a")
	p := profileFor("lease", "lease")
	agents := startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "lease-a")
	agents["lease-a"].useLease()
	createProfile(t, p)
	eventually(t, 20*time.Second, "verified", conditionIs(t, "lease-a", corev1.ConditionTrue, controllers.ReasonVerified))
	time.Sleep(2*heartbeatTimeout + time.Second)
	if err := conditionIs(t, "lease-a", corev1.ConditionTrue, controllers.ReasonVerified)(); err != nil {
		t.Fatalf("a node whose Lease is renewed left verified: %v", err)
	}
	ns := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "lease-a"}, ns); err != nil {
		t.Fatal(err)
	}
	if hb := ns.Status.HeartbeatTime; hb == nil || time.Since(hb.Time) < heartbeatTimeout {
		t.Fatalf("the status heartbeat (%v) is fresh: the test proves nothing about the Lease", hb)
	}
	agents["lease-a"].stopHeartbeat()
	eventually(t, 3*heartbeatTimeout+5*time.Second, "unknown", conditionIs(t, "lease-a", corev1.ConditionUnknown, controllers.ReasonHeartbeatExpired))
	agents["lease-a"].setHeartbeat(true)
	eventually(t, 10*time.Second, "verified again", conditionIs(t, "lease-a", corev1.ConditionTrue, controllers.ReasonVerified))
}

func TestProfileDeletionRemovesConditionsTaintsAndSensors(t *testing.T) {
	createNodes(t, "cleanup", "cleanup-a")
	p := profileFor("cleanup", "cleanup")
	p.Spec.Enforcement.Taint = true
	// Every self-test fails, so the node keeps its taint until the profile goes.
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestFailed), "cleanup-a")
	createProfile(t, p)
	eventually(t, 20*time.Second, "node failed", conditionIs(t, "cleanup-a", corev1.ConditionFalse, controllers.ReasonNoSupportedDriver))
	n := &corev1.Node{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "cleanup-a"}, n); err != nil {
		t.Fatal(err)
	}
	if !hasUnverifiedTaint(n) {
		t.Fatalf("unverified node is not tainted: %+v", n.Spec.Taints)
	}
	if err := env.Client.Delete(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "cleaned up", func() error {
		n := &corev1.Node{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "cleanup-a"}, n); err != nil {
			return err
		}
		if hasUnverifiedTaint(n) {
			return fmt.Errorf("taint left: %+v", n.Spec.Taints)
		}
		if c := nodeCondition(t, "cleanup-a"); c != nil {
			return fmt.Errorf("condition left: %+v", c)
		}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "cleanup-a"}, &v1alpha1.NodeSensor{}); err == nil {
			return fmt.Errorf("node sensor left")
		}
		return nil
	})
}

func hasUnverifiedTaint(n *corev1.Node) bool {
	for _, taint := range n.Spec.Taints {
		if taint.Key == v1alpha1.UnverifiedTaintKey && taint.Effect == corev1.TaintEffectNoSchedule {
			return true
		}
	}
	return false
}

// TestUpgradeReverifiesPacedWithoutLosingReadiness plays an operator upgrade: nodes verified by
// agent 0.1.0 get agent 0.2.0 (the manager's version). Every node re-verifies, canary first,
// never more than maxUnavailable at once, and no node leaves RuntimeSecurityReady=True.
func TestUpgradeReverifiesPacedWithoutLosingReadiness(t *testing.T) {
	nodes := []string{"upgrade-a", "upgrade-b", "upgrade-c", "upgrade-d"}
	createNodes(t, "upgrade", nodes...)
	p := profileFor("upgrade", "upgrade")
	p.Spec.Rollout.MaxUnavailable = ptr.To(intstr.FromInt32(1))
	p.Spec.Rollout.Canary = &v1alpha1.CanarySpec{Count: ptr.To[int32](1)} // upgrade-a, first by name
	agents := startAgents(t, 400*time.Millisecond, always(v1alpha1.SelfTestPassed), nodes...)
	for _, a := range agents {
		a.upgrade("0.1.0")
	}
	createProfile(t, p)
	for _, n := range nodes {
		eventually(t, 30*time.Second, n+" verified by the old agent", conditionIs(t, n, corev1.ConditionTrue, controllers.ReasonVerified))
	}
	// An old agent still running is not asked to re-verify.
	time.Sleep(500 * time.Millisecond)
	attempts := map[string]int32{}
	for _, n := range nodes {
		ns := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: n}, ns); err != nil {
			t.Fatal(err)
		}
		attempts[n] = ns.Spec.Attempt
	}

	// Sample readiness, in-flight re-verifications and the canary order while the upgrade rolls.
	var notReady, earlyStart atomic.Value
	notReady.Store("")
	earlyStart.Store("")
	maxInFlight, stop := watchInFlight(t, nodes)
	ctx, cancel := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for ctx.Err() == nil {
			for _, n := range nodes {
				if c := nodeCondition(t, n); c == nil || c.Status != corev1.ConditionTrue {
					notReady.Store(fmt.Sprintf("%s left Ready: %+v", n, c))
				}
			}
			sensors := snapshot(ctx, nodes)
			canary := sensors["upgrade-a"]
			if canary == nil {
				continue
			}
			st := canary.Status.SelfTest
			canaryReverified := st != nil && st.AgentVersion == agentVersion && st.Result == v1alpha1.SelfTestPassed
			var started []string
			for _, n := range nodes[1:] {
				if ns := sensors[n]; ns != nil && ns.Spec.Attempt > attempts[n] {
					started = append(started, n)
				}
			}
			if len(started) > 0 && !canaryReverified {
				earlyStart.Store(fmt.Sprintf("%v asked to re-verify before the canary had passed (canary spec %+v, self-test %+v)", started, canary.Spec, st))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	for _, a := range agents {
		a.upgrade(agentVersion)
	}
	eventually(t, 30*time.Second, "every node re-verified by the new agent", func() error {
		for _, n := range nodes {
			ns := &v1alpha1.NodeSensor{}
			if err := env.Client.Get(context.Background(), client.ObjectKey{Name: n}, ns); err != nil {
				return err
			}
			st := ns.Status.SelfTest
			if st == nil || st.AgentVersion != agentVersion || st.Attempt != ns.Spec.Attempt || st.Result != v1alpha1.SelfTestPassed {
				return fmt.Errorf("%s not re-verified yet: attempt %d, verdict %+v", n, ns.Spec.Attempt, st)
			}
		}
		return nil
	})
	cancel()
	<-sampled
	stop()
	if msg := notReady.Load().(string); msg != "" {
		t.Errorf("a node left RuntimeSecurityReady=True during the upgrade: %s", msg)
	}
	if msg := earlyStart.Load().(string); msg != "" {
		t.Error(msg)
	}
	if got := maxInFlight.Load(); got > 1 {
		t.Errorf("%d nodes re-verified at once, maxUnavailable is 1", got)
	}
	for _, n := range nodes {
		ns := &v1alpha1.NodeSensor{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: n}, ns); err != nil {
			t.Fatal(err)
		}
		if ns.Spec.Attempt != attempts[n]+1 {
			t.Errorf("%s: attempt %d after the upgrade, want %d (one re-verification)", n, ns.Spec.Attempt, attempts[n]+1)
		}
	}
}

func TestSpecTheAPICannotCheckIsReportedAsInvalidSpec(t *testing.T) {
	createNodes(t, "invalid", "invalid-a")
	cases := map[string]func(*v1alpha1.SecurityProfile){
		"invalid-regexp": func(p *v1alpha1.SecurityProfile) {
			p.Spec.Drivers.Overrides = []v1alpha1.DriverOverride{{
				Match: v1alpha1.OverrideMatch{KernelRelease: "^5.10.(amzn2"}, Preference: []v1alpha1.Driver{v1alpha1.DriverKmod},
			}}
		},
		"old-falco": func(p *v1alpha1.SecurityProfile) {
			p.Spec.Sensor = v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falcosecurity/falco:0.35.1"}
		},
	}
	cases["bad-canary-selector"] = func(p *v1alpha1.SecurityProfile) {
		p.Spec.Rollout.Canary = &v1alpha1.CanarySpec{NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"canary": "not a label value!"}}}
	}
	wants := map[string]string{"invalid-regexp": "kernelRelease", "old-falco": "0.38.0", "bad-canary-selector": "spec.rollout.canary.nodeSelector"}
	for name, mutate := range cases {
		p := profileFor(name, "invalid")
		mutate(p)
		createProfile(t, p)
		eventually(t, 10*time.Second, name+" InvalidSpec", func() error {
			got := &v1alpha1.SecurityProfile{}
			if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(p), got); err != nil {
				return err
			}
			c := meta.FindStatusCondition(got.Status.Conditions, controllers.ConditionReady)
			if c == nil || c.Reason != controllers.ReasonInvalidSpec || !strings.Contains(c.Message, wants[name]) {
				return fmt.Errorf("Ready: %+v", c)
			}
			return nil
		})
	}
	// No node was started under an invalid spec.
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "invalid-a"}, &v1alpha1.NodeSensor{}); err == nil {
		t.Error("a NodeSensor was created for a profile with an invalid spec")
	}
}

// TestNewKernelGivesFailedDriversANewChance: a node that failed every driver on one kernel is
// decided again when it reboots into another, and verifies there.
func TestNewKernelGivesFailedDriversANewChance(t *testing.T) {
	createNodes(t, "newkernel", "newkernel-a")
	p := profileFor("newkernel", "newkernel")
	agents := startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestFailed), "newkernel-a")
	createProfile(t, p)
	eventually(t, 20*time.Second, "no supported driver on the old kernel",
		conditionIs(t, "newkernel-a", corev1.ConditionFalse, controllers.ReasonNoSupportedDriver))

	agents["newkernel-a"].reboot("6.12.48+deb13-cloud-amd64", always(v1alpha1.SelfTestPassed))
	eventually(t, 20*time.Second, "verified on the new kernel",
		conditionIs(t, "newkernel-a", corev1.ConditionTrue, controllers.ReasonVerified))
	ns := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "newkernel-a"}, ns); err != nil {
		t.Fatal(err)
	}
	if len(ns.Spec.FailedAttempts) == 0 || ns.Spec.FailedAttempts[0].KernelRelease != "6.1.0-28-cloud-amd64" {
		t.Errorf("the old kernel's failures are not kept with their kernel: %+v", ns.Spec.FailedAttempts)
	}
	if ns.Spec.Driver != v1alpha1.DriverModernEBPF {
		t.Errorf("driver %q on the new kernel, want modern_ebpf tried again first", ns.Spec.Driver)
	}
}
