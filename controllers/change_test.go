package controllers_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
)

// Tests of issue 11: the loop under profile edits, faults and hostile status.

func getProfile(t *testing.T, name string) *v1alpha1.SecurityProfile {
	t.Helper()
	p := &v1alpha1.SecurityProfile{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func getSensor(name string) (*v1alpha1.NodeSensor, error) {
	ns := &v1alpha1.NodeSensor{}
	return ns, env.Client.Get(context.Background(), client.ObjectKey{Name: name}, ns)
}

// editProfile applies change to the profile, retrying on conflicts with the manager's writes.
func editProfile(t *testing.T, name string, change func(*v1alpha1.SecurityProfile)) {
	t.Helper()
	eventually(t, 10*time.Second, "edit profile "+name, func() error {
		p := &v1alpha1.SecurityProfile{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, p); err != nil {
			return err
		}
		change(p)
		return env.Client.Update(context.Background(), p)
	})
}

func attemptsOf(t *testing.T, nodes []string) map[string]int32 {
	t.Helper()
	out := map[string]int32{}
	for _, n := range nodes {
		ns, err := getSensor(n)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = ns.Spec.Attempt
	}
	return out
}

// watchReady records the first time one of the nodes was not RuntimeSecurityReady=True.
func watchReady(t *testing.T, nodes []string) (lost *atomic.Value, stop func()) {
	lost, _, stop = watchReadyAllowing(t, nodes, "")
	return lost, stop
}

// watchReadyAllowing is watchReady where a condition with the allowed reason does not count as
// lost; seen says whether it was observed.
func watchReadyAllowing(t *testing.T, nodes []string, allowed string) (lost *atomic.Value, seen *atomic.Bool, stop func()) {
	lost, seen = &atomic.Value{}, &atomic.Bool{}
	lost.Store("")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			for _, n := range nodes {
				c := nodeCondition(t, n)
				if c != nil && allowed != "" && c.Reason == allowed {
					seen.Store(true)
					continue
				}
				if (c == nil || c.Status != corev1.ConditionTrue) && lost.Load() == "" {
					lost.Store(fmt.Sprintf("%s left Ready: %+v", n, c))
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop) // before the nodes go, even when the test fails early
	return lost, seen, stop
}

// TestProfileEditReverifiesPaced (item 1): a change to what nodes must prove re-verifies every
// node, canary first and within maxUnavailable, without a node leaving True; a change that
// alters nothing to prove costs no node a new attempt; the status counts nodes proven under the
// current generation.
func TestProfileEditReverifiesPaced(t *testing.T) {
	nodes := []string{"edit-a", "edit-b", "edit-c", "edit-d"}
	createNodes(t, "edit", nodes...)
	p := profileFor("edit", "edit")
	p.Spec.Rollout.MaxUnavailable = ptr.To(intstr.FromInt32(1))
	p.Spec.Rollout.Canary = &v1alpha1.CanarySpec{Count: ptr.To[int32](1)} // edit-a
	startAgents(t, 300*time.Millisecond, always(v1alpha1.SelfTestPassed), nodes...)
	createProfile(t, p)
	for _, n := range nodes {
		eventually(t, 30*time.Second, n+" verified", conditionIs(t, n, corev1.ConditionTrue, controllers.ReasonVerified))
	}
	before := attemptsOf(t, nodes)

	lost, stopReady := watchReady(t, nodes)
	maxInFlight, stopInFlight := watchInFlight(t, nodes)
	var early atomic.Value
	early.Store("")
	ctx, cancel := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for ctx.Err() == nil {
			s := snapshot(ctx, nodes)
			canary := s["edit-a"]
			if canary == nil {
				continue
			}
			st := canary.Status.SelfTest
			canaryDone := slices.Contains(canary.Spec.SelfTest.Checks, v1alpha1.CheckExeCopyUp) && st != nil &&
				st.Attempt == canary.Spec.Attempt && st.Result == v1alpha1.SelfTestPassed
			for _, n := range nodes[1:] {
				if ns := s[n]; ns != nil && ns.Spec.Attempt > before[n] && !canaryDone {
					early.Store(n + " re-verified before the canary")
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	editProfile(t, "edit", func(p *v1alpha1.SecurityProfile) {
		p.Spec.SelfTest.Checks = []v1alpha1.CheckName{v1alpha1.CheckExeUpperLayer, v1alpha1.CheckExeLowerLayer, v1alpha1.CheckExeCopyUp}
	})
	eventually(t, 30*time.Second, "every node proven with the new checks", func() error {
		for _, n := range nodes {
			ns, err := getSensor(n)
			if err != nil {
				return err
			}
			st := ns.Status.SelfTest
			if !slices.Contains(ns.Spec.SelfTest.Checks, v1alpha1.CheckExeCopyUp) || st == nil || st.Attempt != ns.Spec.Attempt || st.Result != v1alpha1.SelfTestPassed {
				return fmt.Errorf("%s not re-verified: checks %v, attempt %d, verdict %+v", n, ns.Spec.SelfTest.Checks, ns.Spec.Attempt, st)
			}
		}
		return nil
	})
	cancel()
	<-sampled
	stopInFlight()
	stopReady()
	if msg := lost.Load().(string); msg != "" {
		t.Errorf("a node left RuntimeSecurityReady=True while re-verifying: %s", msg)
	}
	if msg := early.Load().(string); msg != "" {
		t.Error(msg)
	}
	if got := maxInFlight.Load(); got > 1 {
		t.Errorf("%d nodes re-verified at once, maxUnavailable is 1", got)
	}
	eventually(t, 10*time.Second, "status counts nodes proven under the current generation", func() error {
		got := getProfile(t, "edit")
		if got.Status.ObservedGeneration != got.Generation || got.Status.Nodes.UpToDate != 4 {
			return fmt.Errorf("generation %d observed %d, nodes %+v", got.Generation, got.Status.ObservedGeneration, got.Status.Nodes)
		}
		return nil
	})

	// A new interval changes nothing a node must prove: no new attempt, the setting is copied.
	after := attemptsOf(t, nodes)
	editProfile(t, "edit", func(p *v1alpha1.SecurityProfile) {
		p.Spec.SelfTest.Interval = &metav1.Duration{Duration: 12 * time.Hour}
	})
	eventually(t, 10*time.Second, "interval copied", func() error {
		for _, n := range nodes {
			ns, err := getSensor(n)
			if err != nil {
				return err
			}
			if ns.Spec.SelfTest.Interval == nil || ns.Spec.SelfTest.Interval.Duration != 12*time.Hour {
				return fmt.Errorf("%s interval %v", n, ns.Spec.SelfTest.Interval)
			}
		}
		return nil
	})
	time.Sleep(time.Second)
	for n, a := range attemptsOf(t, nodes) {
		if a != after[n] {
			t.Errorf("%s: a new interval cost a re-verification (attempt %d -> %d)", n, after[n], a)
		}
	}
}

// TestSensorSwitchIsNoDriverFailure (item 1): Falco to Builtin. The agents' pods are replaced
// before the manager reaches their nodes and report SensorUnavailable for the old spec: that is
// no failed attempt against a driver that works, and every node ends proven by the new sensor.
func TestSensorSwitchIsNoDriverFailure(t *testing.T) {
	nodes := []string{"switch-a", "switch-b"}
	createNodes(t, "switch", nodes...)
	p := profileFor("switch", "switch")
	p.Spec.Sensor = v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falcosecurity/falco:0.42.1"}
	p.Spec.Rollout.MaxUnavailable = ptr.To(intstr.FromInt32(1))
	agents := startAgents(t, 100*time.Millisecond, always(v1alpha1.SelfTestPassed), nodes...)
	for _, a := range agents {
		a.restart(v1alpha1.SensorFalco)
	}
	createProfile(t, p)
	for _, n := range nodes {
		eventually(t, 30*time.Second, n+" verified with Falco", conditionIs(t, n, corev1.ConditionTrue, controllers.ReasonVerified))
	}
	editProfile(t, "switch", func(p *v1alpha1.SecurityProfile) { p.Spec.Sensor = v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin} })
	for _, a := range agents {
		a.restart(v1alpha1.SensorBuiltin)
	}
	eventually(t, 30*time.Second, "every node proven by the built-in sensor", func() error {
		for _, n := range nodes {
			ns, err := getSensor(n)
			if err != nil {
				return err
			}
			if !provenBySensor(ns, v1alpha1.SensorBuiltin) {
				return fmt.Errorf("%s: sensor %s, attempt %d, verdict %+v", n, ns.Spec.Sensor.Kind, ns.Spec.Attempt, ns.Status.SelfTest)
			}
			if err := conditionIs(t, n, corev1.ConditionTrue, controllers.ReasonVerified)(); err != nil {
				return err
			}
		}
		return nil
	})
	for _, n := range nodes {
		ns, _ := getSensor(n)
		if len(ns.Spec.FailedAttempts) > 0 || ns.Spec.Driver != v1alpha1.DriverModernEBPF {
			t.Errorf("%s: the sensor switch was recorded against the driver: driver %s, failed %+v", n, ns.Spec.Driver, ns.Spec.FailedAttempts)
		}
	}
}

// provenBySensor reports whether the node's current attempt, with a spec naming sensor kind,
// passed its self-test.
func provenBySensor(ns *v1alpha1.NodeSensor, kind v1alpha1.SensorKind) bool {
	st := ns.Status.SelfTest
	return ns.Spec.Sensor.Kind == kind && st != nil && st.Attempt == ns.Spec.Attempt && st.Result == v1alpha1.SelfTestPassed
}

// TestOneBadNodeDoesNotStopTheOthers (item 2): the API refuses every decision for one node (an
// admission policy plays the fault); that node says so on its condition and in an event, and
// every other node is verified.
func TestOneBadNodeDoesNotStopTheOthers(t *testing.T) {
	nodes := []string{"onebad-a", "onebad-b", "onebad-c"}
	createNodes(t, "onebad", nodes...)
	denyDecisions(t, "onebad-b")
	p := profileFor("onebad", "onebad")
	p.Spec.Rollout.MaxUnavailable = ptr.To(intstr.FromString("100%"))
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), nodes...)
	createProfile(t, p)
	for _, n := range []string{"onebad-a", "onebad-c"} {
		eventually(t, 30*time.Second, n+" verified", conditionIs(t, n, corev1.ConditionTrue, controllers.ReasonVerified))
	}
	eventually(t, 20*time.Second, "the bad node says what failed", conditionIs(t, "onebad-b", corev1.ConditionUnknown, controllers.ReasonDecisionFailed))
	eventually(t, 10*time.Second, "an event on the bad node", func() error {
		return findEvent("NodeSensor", "onebad-b", controllers.ReasonDecisionFailed, "onebad-b")
	})
}

// denyDecisions installs an admission policy that refuses any new attempt for one NodeSensor.
func denyDecisions(t *testing.T, node string) {
	t.Helper()
	ctx := context.Background()
	policy := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-" + node},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionv1.Fail),
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Update},
					Rule:       admissionv1.Rule{APIGroups: []string{v1alpha1.GroupVersion.Group}, APIVersions: []string{"*"}, Resources: []string{"nodesensors"}},
				},
			}}},
			Validations: []admissionv1.Validation{{
				Expression: fmt.Sprintf("object.metadata.name != '%s' || !has(object.spec.attempt) || (has(oldObject.spec.attempt) && object.spec.attempt == oldObject.spec.attempt)", node),
				Message:    "test fault: no decision for " + node,
			}},
		},
	}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-" + node},
		Spec:       admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: policy.Name, ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny}},
	}
	for _, o := range []client.Object{policy, binding} {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(ctx, o) })
	}
	// The policy takes effect once the API server has loaded it: probe with a throwaway object.
	probe := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: node}, Spec: v1alpha1.NodeSensorSpec{Profile: "probe"}}
	if err := env.Client.Create(ctx, probe); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "admission policy active", func() error {
		ns, err := getSensor(node)
		if err != nil {
			return err
		}
		ns.Spec.Attempt++
		if err := env.Client.Update(ctx, ns); err == nil {
			return fmt.Errorf("update allowed")
		} else if !strings.Contains(err.Error(), "test fault") {
			return err
		}
		return nil
	})
	if err := env.Client.Delete(ctx, probe); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "probe gone", func() error {
		if _, err := getSensor(node); err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
}

// findEvent looks for an events.k8s.io event about an object with the reason and a note holding want.
func findEvent(kind, name, reason, want string) error {
	var list eventsv1.EventList
	if err := env.Client.List(context.Background(), &list); err != nil {
		return err
	}
	for _, e := range list.Items {
		if e.Regarding.Kind == kind && e.Regarding.Name == name && e.Reason == reason && strings.Contains(e.Note, want) {
			return nil
		}
	}
	return fmt.Errorf("no %s event about %s %s", reason, kind, name)
}

// TestUnparsableSelectorStopsOnlyItsProfile (item 2): a profile whose selector the API server
// accepted but the manager cannot parse is InvalidSpec; the others go on.
func TestUnparsableSelectorStopsOnlyItsProfile(t *testing.T) {
	createNodes(t, "badsel", "badsel-a")
	bad := profileFor("badsel-bad", "badsel")
	bad.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"test": "not a label value!"}}
	createProfile(t, bad)
	time.Sleep(1100 * time.Millisecond) // the bad profile is older: it would win every node
	good := profileFor("badsel-good", "badsel")
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "badsel-a")
	createProfile(t, good)
	eventually(t, 20*time.Second, "bad profile InvalidSpec", func() error {
		c := meta.FindStatusCondition(getProfile(t, "badsel-bad").Status.Conditions, controllers.ConditionReady)
		if c == nil || c.Reason != controllers.ReasonInvalidSpec || !strings.Contains(c.Message, "nodeSelector") {
			return fmt.Errorf("Ready: %+v", c)
		}
		return nil
	})
	eventually(t, 20*time.Second, "good profile's node verified", conditionIs(t, "badsel-a", corev1.ConditionTrue, controllers.ReasonVerified))
}

// TestProfileTurnedInvalidKeepsItsNodes (item 2): a profile edited into a selector the manager
// cannot parse keeps the nodes it governs (a newer profile does not take them over meanwhile),
// and its nodes stay verified.
func TestProfileTurnedInvalidKeepsItsNodes(t *testing.T) {
	createNodes(t, "keepnodes", "keepnodes-a")
	older := profileFor("keepnodes-older", "keepnodes")
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "keepnodes-a")
	createProfile(t, older)
	eventually(t, 20*time.Second, "verified", conditionIs(t, "keepnodes-a", corev1.ConditionTrue, controllers.ReasonVerified))
	time.Sleep(1100 * time.Millisecond) // creation timestamps have one-second resolution
	createProfile(t, profileFor("keepnodes-newer", "keepnodes"))
	editProfile(t, "keepnodes-older", func(p *v1alpha1.SecurityProfile) {
		p.Spec.NodeSelector.MatchLabels["test"] = "not a label value!"
	})
	eventually(t, 20*time.Second, "older profile InvalidSpec", func() error {
		c := meta.FindStatusCondition(getProfile(t, "keepnodes-older").Status.Conditions, controllers.ConditionReady)
		if c == nil || c.Reason != controllers.ReasonInvalidSpec {
			return fmt.Errorf("Ready: %+v", c)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	ns, err := getSensor("keepnodes-a")
	if err != nil {
		t.Fatal(err)
	}
	if ns.Spec.Profile != "keepnodes-older" {
		t.Errorf("the node changed hands while its profile was invalid: now follows %s", ns.Spec.Profile)
	}
	if err := conditionIs(t, "keepnodes-a", corev1.ConditionTrue, controllers.ReasonVerified)(); err != nil {
		t.Error(err)
	}
}

// TestPassedWithoutChecksIsNoProof (item 3): an agent that says Passed without reporting every
// required check, or for another boot, never makes its node True.
func TestPassedWithoutChecksIsNoProof(t *testing.T) {
	nodes := []string{"hostile-a", "hostile-b"}
	createNodes(t, "hostile", nodes...)
	p := profileFor("hostile", "hostile")
	p.Spec.Rollout.MaxUnavailable = ptr.To(intstr.FromString("100%"))
	agents := startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), nodes...)
	agents["hostile-a"].mu.Lock()
	agents["hostile-a"].tamper = func(st *v1alpha1.SelfTestStatus) { st.Checks = st.Checks[:1] } // ExeUpperLayer only
	agents["hostile-a"].mu.Unlock()
	agents["hostile-b"].mu.Lock()
	agents["hostile-b"].tamper = func(st *v1alpha1.SelfTestStatus) { st.BootID = "" }
	agents["hostile-b"].mu.Unlock()
	lostNever := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	t.Cleanup(func() { cancel(); <-sampled })
	go func() {
		defer close(sampled)
		for ctx.Err() == nil {
			for _, n := range nodes {
				if c := nodeCondition(t, n); c != nil && c.Status == corev1.ConditionTrue {
					select {
					case lostNever <- n:
					default:
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	createProfile(t, p)
	eventually(t, 20*time.Second, "incomplete self-test recorded as failed", func() error {
		ns, err := getSensor("hostile-a")
		if err != nil {
			return err
		}
		for _, f := range ns.Spec.FailedAttempts {
			if strings.Contains(f.Reason, "ExeLowerLayer") {
				return nil
			}
		}
		return fmt.Errorf("failed attempts %+v", ns.Spec.FailedAttempts)
	})
	time.Sleep(time.Second)
	cancel()
	<-sampled
	select {
	case n := <-lostNever:
		t.Errorf("%s was RuntimeSecurityReady=True on a self-test that proves nothing", n)
	default:
	}
}

// TestBrownoutAddsNoTaints (item 4): most agents of a profile go silent together; their nodes
// turn Unknown, but no taint is added, and the profile says why.
func TestBrownoutAddsNoTaints(t *testing.T) {
	nodes := []string{"brown-a", "brown-b", "brown-c", "brown-d"}
	agents := verifiedTaintingFleet(t, "brown", nodes)
	// Heartbeats of a brownout do not expire at the same instant: the first silent node must not
	// be tainted before the others follow.
	for _, n := range nodes[:3] {
		agents[n].stopHeartbeat()
		time.Sleep(time.Second)
	}
	for _, n := range nodes[:3] {
		eventually(t, 3*heartbeatTimeout+5*time.Second, n+" unknown", conditionIs(t, n, corev1.ConditionUnknown, controllers.ReasonHeartbeatExpired))
	}
	eventually(t, 10*time.Second, "profile reports the brownout", func() error {
		c := meta.FindStatusCondition(getProfile(t, "brown").Status.Conditions, controllers.ConditionBrownout)
		if c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "3 of 4") {
			return fmt.Errorf("Brownout: %+v", c)
		}
		return nil
	})
	// Past the grace a lone silent node gets (two heartbeat timeouts), so only the brownout
	// guard can keep these nodes untainted now.
	time.Sleep(2 * heartbeatTimeout)
	if err := untainted(nodes)(); err != nil {
		t.Errorf("during a brownout: %v", err)
	}
}

// TestSilentNodeIsTainted: outside a brownout, a node whose agent went silent gets the taint
// (after one more heartbeat timeout, which lets a brownout show first).
func TestSilentNodeIsTainted(t *testing.T) {
	nodes := []string{"silent-a", "silent-b", "silent-c"}
	agents := verifiedTaintingFleet(t, "silent", nodes)
	agents["silent-a"].stopHeartbeat()
	eventually(t, 4*heartbeatTimeout+5*time.Second, "silent node tainted", func() error {
		if err := untainted(nodes[:1])(); err == nil {
			return fmt.Errorf("silent-a not tainted")
		}
		return nil
	})
	if err := untainted(nodes[1:])(); err != nil {
		t.Error(err)
	}
}

// verifiedTaintingFleet creates the nodes and a profile of the same name with taint: true, and
// returns their agents once every node is verified and untainted.
func verifiedTaintingFleet(t *testing.T, name string, nodes []string) map[string]*fakeAgent {
	t.Helper()
	createNodes(t, name, nodes...)
	p := profileFor(name, name)
	p.Spec.Enforcement.Taint = true
	p.Spec.Rollout.MaxUnavailable = ptr.To(intstr.FromString("100%"))
	agents := startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), nodes...)
	createProfile(t, p)
	for _, n := range nodes {
		eventually(t, 30*time.Second, n+" verified", conditionIs(t, n, corev1.ConditionTrue, controllers.ReasonVerified))
	}
	eventually(t, 10*time.Second, "taints removed", untainted(nodes))
	return agents
}

// untainted checks that none of the nodes has the unverified taint.
func untainted(nodes []string) func() error {
	return func() error {
		for _, name := range nodes {
			n := &corev1.Node{}
			if err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, n); err != nil {
				return err
			}
			if hasUnverifiedTaint(n) {
				return fmt.Errorf("node %s tainted", name)
			}
		}
		return nil
	}
}

// TestCanariesAreChosenOnce (item 5): a node that joins later and sorts first does not take the
// canary slot, and the canaries are in the profile status.
func TestCanariesAreChosenOnce(t *testing.T) {
	createNodes(t, "once", "once-b", "once-c")
	p := profileFor("once", "once")
	p.Spec.Rollout.Canary = &v1alpha1.CanarySpec{Count: ptr.To[int32](1)}
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "once-a", "once-b", "once-c")
	createProfile(t, p)
	for _, n := range []string{"once-b", "once-c"} {
		eventually(t, 30*time.Second, n+" verified", conditionIs(t, n, corev1.ConditionTrue, controllers.ReasonVerified))
	}
	eventually(t, 10*time.Second, "canary recorded", func() error {
		if got := getProfile(t, "once").Status.Canaries; fmt.Sprint(got) != "[once-b]" {
			return fmt.Errorf("canaries %v, want [once-b]", got)
		}
		return nil
	})
	createNodes(t, "once", "once-a")
	eventually(t, 30*time.Second, "once-a verified", conditionIs(t, "once-a", corev1.ConditionTrue, controllers.ReasonVerified))
	if got := getProfile(t, "once").Status.Canaries; fmt.Sprint(got) != "[once-b]" {
		t.Errorf("canaries %v after a node sorting first joined, want [once-b]", got)
	}
}

// TestFailedOrSilentCanaryPausesTheRollout (item 5): the condition names the canary and says how
// to continue.
func TestFailedOrSilentCanaryPausesTheRollout(t *testing.T) {
	createNodes(t, "pause", "pause-a", "pause-b", "pause-c")
	failing := profileFor("pause", "pause")
	failing.Spec.Rollout.Canary = &v1alpha1.CanarySpec{Count: ptr.To[int32](1)} // pause-a
	startAgents(t, 50*time.Millisecond, func(v1alpha1.Driver) v1alpha1.SelfTestResult { return v1alpha1.SelfTestFailed }, "pause-a")
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "pause-b") // pause-c has no agent
	createProfile(t, failing)
	pausedBy := func(reason, node string) func() error {
		return func() error {
			c := meta.FindStatusCondition(getProfile(t, "pause").Status.Conditions, controllers.ConditionProgressing)
			if c == nil || c.Status != metav1.ConditionFalse || c.Reason != reason || !strings.Contains(c.Message, node) || !strings.Contains(c.Message, "spec.rollout.canary") {
				return fmt.Errorf("Progressing: %+v", c)
			}
			return nil
		}
	}
	eventually(t, 30*time.Second, "paused by the failed canary", pausedBy(controllers.ReasonCanaryFailed, "pause-a"))
	if ns, _ := getSensor("pause-b"); ns.Spec.Driver != "" {
		t.Errorf("pause-b started while the canary failed")
	}
	// A canary whose agent never reports pauses the rollout as well, after the heartbeat timeout.
	editProfile(t, "pause", func(p *v1alpha1.SecurityProfile) {
		p.Spec.Rollout.Canary = &v1alpha1.CanarySpec{NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/hostname": "pause-c"}}}
	})
	labelNode(t, "pause-c", "kubernetes.io/hostname", "pause-c")
	eventually(t, 3*heartbeatTimeout+10*time.Second, "paused by the silent canary", pausedBy(controllers.ReasonCanarySilent, "pause-c"))
}

func labelNode(t *testing.T, name, key, value string) {
	t.Helper()
	eventually(t, 10*time.Second, "label "+name, func() error {
		n := &corev1.Node{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, n); err != nil {
			return err
		}
		n.Labels[key] = value
		return env.Client.Update(context.Background(), n)
	})
}

// TestLongFailureReachesTheEvents (item 8): a self-test failure with a long message still makes
// its event (the events API refuses notes over 1024 bytes).
func TestLongFailureReachesTheEvents(t *testing.T) {
	createNodes(t, "longnote", "longnote-a")
	p := profileFor("longnote", "longnote")
	agents := startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestFailed), "longnote-a")
	agents["longnote-a"].mu.Lock()
	agents["longnote-a"].tamper = func(st *v1alpha1.SelfTestStatus) { st.Message = strings.Repeat("verifier log line ", 220) }
	agents["longnote-a"].mu.Unlock()
	createProfile(t, p)
	eventually(t, 20*time.Second, "SelfTestFailed event", func() error {
		return findEvent("SecurityProfile", "longnote", "SelfTestFailed", "longnote-a")
	})
}
