package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/event"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

func sensor(uid string, attempt int32) *v1alpha1.NodeSensor {
	ns := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: v1alpha1.NodeSensorSpec{Attempt: attempt}}
	ns.UID = k8stypes.UID("uid-" + uid)
	return ns
}

func TestExpectationsFollowTheObjectNotTheName(t *testing.T) {
	var e expectations
	e.set(sensor("a", 3))
	if !e.stale(sensor("a", 2)) {
		t.Error("a cache showing attempt 2 after this manager wrote 3 is stale")
	}
	if e.stale(sensor("a", 3)) || e.stale(sensor("a", 4)) {
		t.Error("a cache at or past the written attempt is not stale")
	}
	// The NodeSensor was deleted and created again under the same name: a new object at attempt 0.
	if e.stale(sensor("b", 0)) {
		t.Error("a recreated NodeSensor must not wait forever for the old object's attempt")
	}
	e.forget("n1")
	if e.stale(sensor("a", 0)) {
		t.Error("a forgotten node is never stale")
	}
}

func TestHeartbeatPredicate(t *testing.T) {
	p := notOnlyHeartbeat(time.Minute, &liveness{}, time.Now)
	at := func(ago time.Duration) *v1alpha1.NodeSensor {
		ns := &v1alpha1.NodeSensor{}
		hb := metav1.NewTime(time.Now().Add(-ago))
		ns.Status.HeartbeatTime = &hb
		return ns
	}
	if p.Update(event.UpdateEvent{ObjectOld: at(10 * time.Second), ObjectNew: at(0)}) {
		t.Error("a plain heartbeat must not trigger a reconcile")
	}
	if !p.Update(event.UpdateEvent{ObjectOld: at(5 * time.Minute), ObjectNew: at(0)}) {
		t.Error("the first heartbeat after an expiry must trigger a reconcile, or the node stays Unknown")
	}
	changed := at(0)
	changed.Status.SelfTest = &v1alpha1.SelfTestStatus{Result: v1alpha1.SelfTestPassed}
	if !p.Update(event.UpdateEvent{ObjectOld: at(10 * time.Second), ObjectNew: changed}) {
		t.Error("a new verdict must trigger a reconcile")
	}
}

func TestNodeAffinityIsStable(t *testing.T) {
	// Enough requirements for sort to leave insertion sort, and keys that appear in both
	// matchLabels (map order) and matchExpressions: an order by key alone would vary.
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i < 20; i++ {
		key := fmt.Sprintf("k%02d", i)
		sel.MatchLabels[key] = "v"
		sel.MatchExpressions = append(sel.MatchExpressions, metav1.LabelSelectorRequirement{Key: key, Operator: metav1.LabelSelectorOpExists})
	}
	render := func() string {
		return templateHash(corev1.PodTemplateSpec{Spec: corev1.PodSpec{Affinity: &corev1.Affinity{NodeAffinity: nodeAffinity(sel)}}})
	}
	first := render()
	for i := 0; i < 50; i++ {
		if render() != first {
			t.Fatal("the agent template changes between renders of one selector: every reconcile would restart the agents")
		}
	}
}

func TestOnlyConflictsRequeueQuietly(t *testing.T) {
	conflict := apierrors.NewConflict(schema.GroupResource{Resource: "nodesensors"}, "n1", errors.New("stale"))
	invalid := apierrors.NewInvalid(schema.GroupKind{Kind: "NodeSensor"}, "n2", nil)
	if !onlyConflicts(errors.Join(conflict, fmt.Errorf("assign driver to n3: %w", conflict))) {
		t.Error("a pass with only conflicts is retried at once, not reported")
	}
	if onlyConflicts(errors.Join(conflict, invalid)) {
		t.Error("a pass with another error must report it")
	}
}

func TestEventNotesFitTheEventsAPI(t *testing.T) {
	long := strings.Repeat("é", 2000) // two bytes each: the limit is in bytes
	got := truncateBytes(long, maxNoteBytes)
	if len(got) > maxNoteBytes || !utf8.ValidString(got) || !strings.HasSuffix(got, "...") {
		t.Errorf("note of %d bytes (valid UTF-8: %v)", len(got), utf8.ValidString(got))
	}
	if truncateBytes("short", maxNoteBytes) != "short" {
		t.Error("a short note is kept")
	}
}

// TestTaintRetriesOnConflict: the node changed since it was read (the kubelet or another
// controller wrote it); the taint patch conflicts, reads the node again and succeeds without
// undoing the other writer's change.
func TestTaintRetriesOnConflict(t *testing.T) {
	ctx := context.Background()
	s := runtime.NewScheme()
	_ = corev1.AddToScheme(s)
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}).Build()
	stale := &corev1.Node{}
	if err := c.Get(ctx, k8stypes.NamespacedName{Name: "n1"}, stale); err != nil {
		t.Fatal(err)
	}
	other := stale.DeepCopy()
	other.Spec.Taints = []corev1.Taint{{Key: "example.com/other", Effect: corev1.TaintEffectNoSchedule}}
	if err := c.Update(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := setTaint(ctx, c, c, stale, true); err != nil {
		t.Fatalf("taint after a conflict: %v", err)
	}
	got := &corev1.Node{}
	if err := c.Get(ctx, k8stypes.NamespacedName{Name: "n1"}, got); err != nil {
		t.Fatal(err)
	}
	if len(got.Spec.Taints) != 2 || !hasTaint(got) {
		t.Errorf("taints %+v: want the other writer's and ours", got.Spec.Taints)
	}
}

func TestRecordedCanariesFitTheirBound(t *testing.T) {
	var many []string
	for i := 0; i < maxRecordedCanaries+10; i++ {
		many = append(many, fmt.Sprintf("n%05d", i))
	}
	last := many[len(many)-1] // a count canary recorded before: it must stay recorded
	got := recordCanaries(many, []string{last})
	if len(got) != maxRecordedCanaries || !slices.Contains(got, last) {
		t.Errorf("%d recorded (bound %d), count canary kept: %v", len(got), maxRecordedCanaries, slices.Contains(got, last))
	}
}

// TestPodTemplateHashSaysWhatRuns: each agent pod carries the hash of what it runs. A new node
// selector (only where pods run) outdates no pod, though the DaemonSet is rewritten; a new
// sensor or agent image outdates every pod.
func TestPodTemplateHashSaysWhatRuns(t *testing.T) {
	cfg := AgentConfig{Namespace: "ns", Image: "driverpilot:1", ServiceAccount: "agent"}
	profile := &v1alpha1.SecurityProfile{ObjectMeta: metav1.ObjectMeta{Name: "p"}}
	podHash := func(p *v1alpha1.SecurityProfile, c AgentConfig) (pod, ds string) {
		tmpl := agentDaemonSet(p, c).Spec.Template
		return tmpl.Annotations[templateHashAnnotation], templateHash(tmpl)
	}
	base, baseDS := podHash(profile, cfg)
	if base == "" {
		t.Fatal("the pod template carries no hash")
	}
	selected := profile.DeepCopy()
	selected.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "a"}}
	if pod, ds := podHash(selected, cfg); pod != base || ds == baseDS {
		t.Errorf("a new node selector: pod hash %s (want %s, unchanged), DaemonSet hash changed %v (want true)", pod, base, ds != baseDS)
	}
	falco := profile.DeepCopy()
	falco.Spec.Sensor = v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "falcosecurity/falco:0.42.1"}
	if pod, _ := podHash(falco, cfg); pod == base {
		t.Error("a new sensor leaves the pod hash alone: no pod would be replaced")
	}
	upgraded := cfg
	upgraded.Image = "driverpilot:2"
	if pod, _ := podHash(profile, upgraded); pod == base {
		t.Error("a new agent image leaves the pod hash alone: no pod would be replaced")
	}
	if agentDaemonSet(profile, cfg).Spec.UpdateStrategy.Type != "OnDelete" {
		t.Error("the agent DaemonSet is not OnDelete: it would replace pods at its own pace")
	}
}

func TestProfilesOfNodeAreThoseItConcerns(t *testing.T) {
	ctx := context.Background()
	s := runtime.NewScheme()
	_ = corev1.AddToScheme(s)
	_ = v1alpha1.AddToScheme(s)
	profile := func(name string, sel map[string]string) *v1alpha1.SecurityProfile {
		return &v1alpha1.SecurityProfile{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1alpha1.SecurityProfileSpec{NodeSelector: &metav1.LabelSelector{MatchLabels: sel}}}
	}
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(
		profile("before", map[string]string{"pool": "a"}),
		profile("after", map[string]string{"pool": "b"}),
		profile("holder", map[string]string{"other": "x"}),
		profile("unparsable", map[string]string{"pool": "not a label value!"}),
		profile("unrelated", map[string]string{"pool": "c"}),
		&v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: v1alpha1.NodeSensorSpec{Profile: "holder"}},
	).Build()
	r := &SecurityProfileReconciler{Client: c}
	old := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"pool": "a"}}}
	relabelled := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"pool": "b"}}}
	var got []string
	for _, req := range r.profilesOfNode(ctx, old, relabelled) {
		got = append(got, req.Name)
	}
	slices.Sort(got)
	if want := []string{"after", "before", "holder", "unparsable"}; !slices.Equal(got, want) {
		t.Errorf("a relabelled node enqueues %v, want %v (not the unrelated profile)", got, want)
	}
}

func TestEventBatchGathersRoutineEvents(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	r := &SecurityProfileReconciler{Recorder: rec}
	profile := &v1alpha1.SecurityProfile{ObjectMeta: metav1.ObjectMeta{Name: "p"}}
	ctx, b := withEventBatch(context.Background())
	for i := 24; i >= 0; i-- {
		r.batchedEvent(ctx, profile, "NodeVerified", "Verify", "verified with driver ebpf", fmt.Sprintf("node-%02d", i))
	}
	r.batchedEvent(ctx, profile, "NodeVerified", "Verify", "verified with driver kmod", "node-99")
	if len(rec.Events) != 0 {
		t.Fatal("a batched event was recorded before the flush")
	}
	r.flushEvents(b, profile)
	var got []string
	for len(rec.Events) > 0 {
		got = append(got, <-rec.Events)
	}
	if len(got) != 2 {
		t.Fatalf("26 routine events became %d events, want 2: %q", len(got), got)
	}
	if !strings.Contains(got[0], "25 nodes: verified with driver ebpf: node-00, node-01") || !strings.Contains(got[0], "and 15 more") {
		t.Errorf("the summary does not say how many and which: %q", got[0])
	}
	if !strings.Contains(got[1], "Node node-99: verified with driver kmod") {
		t.Errorf("a single node's event does not name it: %q", got[1])
	}
	r.batchedEvent(context.Background(), profile, "DriverSelected", "SelectDriver", "driver ebpf selected", "node-x")
	if len(rec.Events) != 1 {
		t.Error("without a batch the event is not recorded at once")
	}
}

func TestOnlyProgressIsNumbersOnly(t *testing.T) {
	status := func(ready metav1.ConditionStatus, msg string, verified int32) v1alpha1.SecurityProfileStatus {
		return v1alpha1.SecurityProfileStatus{ObservedGeneration: 1, Nodes: v1alpha1.NodeCounts{Verified: verified},
			Conditions: []metav1.Condition{{Type: ConditionProgressing, Status: ready, Reason: ReasonVerifying, Message: msg}}}
	}
	base := status(metav1.ConditionTrue, "3 nodes verifying, 10 pending", 2)
	for _, c := range []struct {
		name string
		next v1alpha1.SecurityProfileStatus
		want bool
	}{
		{"counts and numbers moved", status(metav1.ConditionTrue, "5 nodes verifying, 8 pending", 4), true},
		{"the message says something new", status(metav1.ConditionTrue, "5 nodes verifying, 8 pending; 7 nodes wait for the canary nodes to be verified", 4), false},
		{"a condition turned", status(metav1.ConditionFalse, "3 nodes verifying, 10 pending", 2), false},
	} {
		if got := onlyProgress(base, c.next); got != c.want {
			t.Errorf("%s: onlyProgress = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestRecentWritesSkipOnlyWhatTheCacheHasNotSeen(t *testing.T) {
	var w recentWrites
	w.conditionWritten("n1", "100", "True", ReasonVerified)
	if !w.conditionPending("n1", "100", "True", ReasonVerified) {
		t.Error("the cache still shows the node as before the write, yet the write is not pending")
	}
	if w.conditionPending("n1", "101", "True", ReasonVerified) {
		t.Error("the cache shows a newer node, yet the old write still counts")
	}
	if w.conditionPending("n1", "100", "Unknown", ReasonHeartbeatExpired) {
		t.Error("another condition is taken for the one written")
	}
	now := time.Now()
	w.created("n2", now, false)
	if pending, assigned := w.createPending("n2", now.Add(time.Second)); !pending || assigned {
		t.Errorf("a creation without a driver the cache has not shown: pending %v (want true), assigned %v", pending, assigned)
	}
	if pending, _ := w.createPending("n2", now.Add(createGrace+time.Second)); pending {
		t.Error("a creation never seen stays pending past its grace")
	}
	w.created("n4", now, true)
	if pending, assigned := w.createPending("n4", now); !pending || !assigned {
		t.Error("a creation with a driver is not pending with its slot")
	}
	w.created("n3", now, false)
	w.seen("n3")
	if pending, _ := w.createPending("n3", now); pending {
		t.Error("a creation the cache showed is still pending")
	}
}
