package controllers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
	"github.com/driverpilot/driverpilot/internal/simagent"
)

// fleetKernels are the six kernel groups of TestFleetLearning. fleetBadKernel's first driver
// (modern_ebpf) reports the upper layer as lower on every node (falco#3286's shape).
var fleetKernels = []string{
	"6.1.0-28-cloud-amd64", "5.10.0-32-cloud-amd64", "5.10.219-208.866.amzn2.x86_64",
	"6.12.12-cloud-amd64", "6.8.0-1021-aws", "5.15.0-1075-azure",
}

const fleetBadKernel = "5.10.219-208.866.amzn2.x86_64"

// fleetFlakyNode is the first node of another group: its first self-test times out once.
const fleetFlakyNode = "fleet-4-000"

// TestFleetLearning rolls a profile out over 300 simulated nodes in 6 kernel groups and proves
// the fleet learning of issue 14: the group whose first driver fails on every node spends at
// most 2 failed attempts on it (not one per node) and its other nodes skip it with a reason that
// names the node and attempt it was learned from; the other groups never wait on it; every
// group's first node verifies before the rest of its group starts; a timeout on one node does
// not spread; the matrix (FleetGroups, status.fleet) says what each group learned.
func TestFleetLearning(t *testing.T) {
	const perGroup = 50
	var names []string
	groupOf := map[string]string{}
	for g, release := range fleetKernels {
		for i := 0; i < perGroup; i++ {
			n := fmt.Sprintf("fleet-%d-%03d", g, i)
			names = append(names, n)
			groupOf[n] = release
		}
	}
	// The kubelets report their kernels: a group's nodes after the first start with the driver it
	// proved when it proved its first choice (internal/prediction), and probe alone otherwise.
	createNodesFast(t, "fleet", names, func(name string) corev1.NodeSystemInfo {
		info := corev1.NodeSystemInfo{KernelVersion: groupOf[name], OSImage: "Debian GNU/Linux 12 (bookworm)", Architecture: "amd64"}
		if strings.Contains(groupOf[name], "amzn2") {
			info.OSImage = "Amazon Linux 2"
		}
		return info
	})

	// What happened, as the agents wrote it and their informer saw it.
	var mu sync.Mutex
	started := map[string]time.Time{}                 // node -> when its first driver was seen assigned
	firstPass := map[string]time.Time{}               // group -> its first passing verdict
	firstPassBy := map[string]string{}                // group -> the node of that verdict
	failed := map[string]map[string]map[string]bool{} // group -> driver -> node/attempt of each failed verdict written
	flakyDone := false
	flakyOnce := func() bool { // the flaky node's first self-test only
		mu.Lock()
		defer mu.Unlock()
		first := !flakyDone
		flakyDone = true
		return first
	}
	ctx, cancel := context.WithCancel(context.Background())
	fleet, err := simagent.Start(ctx, env.Config, env.Scheme, names, simagent.Options{
		// No heartbeats: the suite's 3 s heartbeat timeout is for its expiry tests, and 300 agents
		// beating every second on a shared 2-core machine would measure its load, not the learning.
		SelfTestDelay: 200 * time.Millisecond, NoHeartbeat: true, Workers: 8, AgentVersion: agentVersion,
		Facts: func(node, bootID string) *v1alpha1.ProbeFacts {
			f := factsOn(bootID, groupOf[node])
			if strings.Contains(groupOf[node], "amzn2") {
				f.Distro.ID, f.Distro.VersionID = "amzn", "2"
			}
			return f
		},
		Verdict: func(node string, spec v1alpha1.NodeSensorSpec, honest *v1alpha1.SelfTestStatus) *v1alpha1.SelfTestStatus {
			defer func() {
				// A pass is recorded when decided, before the agent writes it: nobody can have
				// acted on it earlier, so a start before it is surely one too early.
				if honest.Result == v1alpha1.SelfTestPassed {
					mu.Lock()
					if _, ok := firstPass[groupOf[node]]; !ok {
						firstPass[groupOf[node]], firstPassBy[groupOf[node]] = time.Now(), node
					}
					mu.Unlock()
				}
			}()
			switch {
			case groupOf[node] == fleetBadKernel && spec.Driver == v1alpha1.DriverModernEBPF:
				simagent.KernelFailure(honest)
			case node == fleetFlakyNode && flakyOnce():
				honest.Result, honest.Reason = v1alpha1.SelfTestFailed, "CheckTimedOut"
				honest.Message = "1 of 2 checks failed: ExeUpperLayer: no event within 10s"
				honest.Checks[0].Result, honest.Checks[0].Observed = v1alpha1.SelfTestFailed, "no event within 10s"
			}
			return honest
		},
		OnSensor: func(ns *v1alpha1.NodeSensor) {
			if ns.Spec.Driver == "" || !strings.HasPrefix(ns.Name, "fleet-") {
				return
			}
			mu.Lock()
			if _, ok := started[ns.Name]; !ok {
				started[ns.Name] = time.Now()
			}
			mu.Unlock()
		},
		OnWrite: func(ns *v1alpha1.NodeSensor) {
			st := ns.Status.SelfTest
			if st == nil {
				return
			}
			g := groupOf[ns.Name]
			mu.Lock()
			defer mu.Unlock()
			if st.Result == v1alpha1.SelfTestFailed {
				if failed[g] == nil {
					failed[g] = map[string]map[string]bool{}
				}
				if failed[g][string(st.Driver)] == nil {
					failed[g][string(st.Driver)] = map[string]bool{}
				}
				// Heartbeats write the same verdict again: count each attempt once.
				failed[g][string(st.Driver)][fmt.Sprintf("%s/%d", ns.Name, st.Attempt)] = true
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); fleet.Wait() })

	begin := time.Now()
	profile := &v1alpha1.SecurityProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "fleet"},
		Spec: v1alpha1.SecurityProfileSpec{
			NodeSelector: selectorFor("fleet"),
			Drivers:      v1alpha1.DriverPolicy{Preference: []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF}},
			Rollout:      v1alpha1.RolloutSpec{MaxUnavailable: ptr.To(intstr.FromString("20%"))},
		},
	}
	createProfile(t, profile)
	waitVerified(t, profile.Name, 300, 90*time.Second)
	t.Logf("300 nodes over 6 kernel groups verified in %s", time.Since(begin).Round(100*time.Millisecond))

	mu.Lock()
	defer mu.Unlock()
	// The failing group spent at most 2 failed attempts on modern_ebpf: its first node, and one
	// more to agree (a group of 50 is large), not one per node.
	if n := len(failed[fleetBadKernel]["modern_ebpf"]); n < 1 || n > 2 {
		t.Errorf("group %s: %d failed modern_ebpf self-tests, want 1 or 2", fleetBadKernel, n)
	}
	// No other group failed anything but the flaky node's one timeout.
	for g, drivers := range failed {
		if g == fleetBadKernel {
			continue
		}
		for d, attempts := range drivers {
			if g != groupOf[fleetFlakyNode] || len(attempts) != 1 {
				t.Errorf("group %s: failed %s self-tests %v", g, d, attempts)
			}
		}
	}
	// Every group's first node verified before any other node of its group started.
	for _, release := range fleetKernels {
		pass, ok := firstPass[release]
		if !ok {
			t.Errorf("group %s: no pass seen", release)
			continue
		}
		for n, at := range started {
			if groupOf[n] == release && n != firstPassBy[release] && at.Before(pass) {
				t.Errorf("group %s: node %s started %s before the group's first node %s verified", release, n, pass.Sub(at), firstPassBy[release])
			}
		}
	}

	var list v1alpha1.NodeSensorList
	if err := env.Client.List(context.Background(), &list, client.MatchingLabels{controllers.ProfileLabel: "fleet"}); err != nil {
		t.Fatal(err)
	}
	var badFailed, learned int
	var badOnSecondDriver, flakyGroupOnFirst int
	for _, ns := range list.Items {
		g := groupOf[ns.Name]
		for _, f := range ns.Spec.FailedAttempts {
			if g == fleetBadKernel && f.Driver == v1alpha1.DriverModernEBPF {
				badFailed++
			}
		}
		switch {
		case g == fleetBadKernel:
			if ns.Spec.Driver == v1alpha1.DriverEBPF {
				badOnSecondDriver++
			}
			for _, r := range ns.Spec.Reasons {
				if r.Source == v1alpha1.ReasonSourceFleet && r.Driver == v1alpha1.DriverModernEBPF &&
					strings.Contains(r.Message, "learned from node fleet-2-") && strings.Contains(r.Message, "(attempt 1)") {
					learned++
				}
			}
		case ns.Name == fleetFlakyNode:
			// Its own timeout counts against modern_ebpf on this node only.
		case g == groupOf[fleetFlakyNode]:
			if ns.Spec.Driver == v1alpha1.DriverModernEBPF && len(ns.Spec.FailedAttempts) == 0 {
				flakyGroupOnFirst++
			}
		default:
			if ns.Spec.Driver != v1alpha1.DriverModernEBPF || len(ns.Spec.FailedAttempts) > 0 {
				t.Errorf("node %s (group %s): driver %s, failed attempts %v", ns.Name, g, ns.Spec.Driver, ns.Spec.FailedAttempts)
			}
		}
	}
	if badFailed > 2 {
		t.Errorf("group %s: %d failed attempts recorded on modern_ebpf, want at most 2", fleetBadKernel, badFailed)
	}
	if badOnSecondDriver != perGroup {
		t.Errorf("group %s: %d nodes on ebpf, want %d", fleetBadKernel, badOnSecondDriver, perGroup)
	}
	if learned != perGroup-badFailed {
		t.Errorf("group %s: %d nodes skip modern_ebpf with a reason naming the node and attempt it was learned from, want %d", fleetBadKernel, learned, perGroup-badFailed)
	}
	// The timeout did not spread: the flaky node's group started on modern_ebpf and kept it.
	if flakyGroupOnFirst != perGroup-1 {
		t.Errorf("group %s: %d of its other nodes on modern_ebpf without a failure, want %d (a timeout must not spread)", groupOf[fleetFlakyNode], flakyGroupOnFirst, perGroup-1)
	}

	// The matrix: one FleetGroup per group, the bad group's modern_ebpf Fails with the reason.
	// (Pass counts are those of verified nodes now: on a loaded machine a heartbeat may have
	// expired since, so only the verdicts are compared.)
	var groups v1alpha1.FleetGroupList
	if err := env.Client.List(context.Background(), &groups, client.MatchingLabels{controllers.ProfileLabel: "fleet"}); err != nil {
		t.Fatal(err)
	}
	if len(groups.Items) != len(fleetKernels) {
		t.Fatalf("%d fleet groups, want %d", len(groups.Items), len(fleetKernels))
	}
	for _, fg := range groups.Items {
		if fg.Status.Nodes != perGroup {
			t.Errorf("group %s: %d nodes", fg.Spec.KernelRelease, fg.Status.Nodes)
		}
		cells := map[v1alpha1.Driver]v1alpha1.FleetDriverStatus{}
		for _, c := range fg.Status.Drivers {
			cells[c.Driver] = c
		}
		switch fg.Spec.KernelRelease {
		case fleetBadKernel:
			c := cells[v1alpha1.DriverModernEBPF]
			if c.Verdict != v1alpha1.FleetFails || c.Failed > 2 || !strings.HasPrefix(c.Reason, "CheckFailed") || fg.Spec.Distro != "amzn 2" {
				t.Errorf("bad group's modern_ebpf cell %+v (distro %q)", c, fg.Spec.Distro)
			}
			if e := cells[v1alpha1.DriverEBPF]; e.Verdict != v1alpha1.FleetWorks || e.Passed < 1 {
				t.Errorf("bad group's ebpf cell %+v", e)
			}
		case groupOf[fleetFlakyNode]:
			if c := cells[v1alpha1.DriverModernEBPF]; c.Verdict != v1alpha1.FleetWorks || c.OtherFailures != 1 {
				t.Errorf("flaky group's modern_ebpf cell %+v", c)
			}
		default:
			if c := cells[v1alpha1.DriverModernEBPF]; c.Verdict != v1alpha1.FleetWorks || c.Passed < 1 {
				t.Errorf("group %s: modern_ebpf cell %+v", fg.Spec.KernelRelease, c)
			}
		}
	}
	p := &v1alpha1.SecurityProfile{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(profile), p); err != nil {
		t.Fatal(err)
	}
	if f := p.Status.Fleet; f == nil || f.Groups != 6 || f.LearnedFailures != 1 {
		t.Errorf("status.fleet %+v, want 6 groups and 1 learned failure", f)
	}
	// Releasing 300 nodes takes longer than createProfile's cleanup waits.
	if err := env.Client.Delete(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	eventually(t, 90*time.Second, "profile fleet and its fleet groups gone", func() error {
		var groups v1alpha1.FleetGroupList
		if err := env.Client.List(context.Background(), &groups, client.MatchingLabels{controllers.ProfileLabel: "fleet"}); err != nil {
			return err
		}
		err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(p), &v1alpha1.SecurityProfile{})
		if err == nil || len(groups.Items) > 0 {
			return fmt.Errorf("profile still there (%v) or %d fleet groups left", err, len(groups.Items))
		}
		return client.IgnoreNotFound(err)
	})
}

// kernelFailure turns the fake agent's failed verdicts into a failure of the kernel's (the
// sensor reported the upper layer as lower) instead of its default timeout.
func kernelFailure(st *v1alpha1.SelfTestStatus) {
	if st.Result == v1alpha1.SelfTestFailed {
		simagent.KernelFailure(st)
	}
}

// TestFleetSmallGroupAndReset: in a small group one failure of the kernel's is the rule at
// once (the group's other nodes start with the next driver, naming the node and attempt), the
// matrix says so, and the profile's reset annotation forgets it: a node that joins afterwards
// tries the first driver again, and its pass is what the group knows from then on.
func TestFleetSmallGroupAndReset(t *testing.T) {
	createNodes(t, "fleetreset", "fleetreset-a", "fleetreset-b", "fleetreset-c")
	modernFails := func(d v1alpha1.Driver) v1alpha1.SelfTestResult {
		if d == v1alpha1.DriverModernEBPF {
			return v1alpha1.SelfTestFailed
		}
		return v1alpha1.SelfTestPassed
	}
	agents := startAgents(t, 50*time.Millisecond, modernFails, "fleetreset-a", "fleetreset-b", "fleetreset-c")
	for _, a := range agents {
		a.tamper = kernelFailure
	}
	profile := &v1alpha1.SecurityProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "fleetreset"},
		Spec: v1alpha1.SecurityProfileSpec{
			NodeSelector: selectorFor("fleetreset"),
			Drivers:      v1alpha1.DriverPolicy{Preference: []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF}},
			Rollout:      v1alpha1.RolloutSpec{MaxUnavailable: ptr.To(intstr.FromInt32(3))},
		},
	}
	createProfile(t, profile)
	for _, n := range []string{"fleetreset-a", "fleetreset-b", "fleetreset-c"} {
		eventually(t, 20*time.Second, n+" verified", conditionIs(t, n, corev1.ConditionTrue, "Verified"))
	}
	// The group's first node failed modern_ebpf; the other two never tried it.
	var first string
	for _, n := range []string{"fleetreset-a", "fleetreset-b", "fleetreset-c"} {
		if len(sensorOf(t, n).Spec.FailedAttempts) > 0 {
			if first != "" {
				t.Fatalf("%s and %s both failed modern_ebpf: the first failure was not shared", first, n)
			}
			first = n
		}
	}
	if first == "" {
		t.Fatal("no node failed modern_ebpf")
	}
	for _, n := range []string{"fleetreset-a", "fleetreset-b", "fleetreset-c"} {
		if n == first {
			continue
		}
		ns := sensorOf(t, n)
		if ns.Spec.Driver != v1alpha1.DriverEBPF || ns.Spec.Attempt != 1 {
			t.Errorf("%s: driver %s attempt %d: want ebpf at its first attempt", n, ns.Spec.Driver, ns.Spec.Attempt)
		}
		found := false
		for _, r := range ns.Spec.Reasons {
			found = found || r.Source == v1alpha1.ReasonSourceFleet && strings.Contains(r.Message, "learned from node "+first+" (attempt 1)")
		}
		if !found {
			t.Errorf("%s: no Fleet reason naming %s attempt 1: %+v", n, first, ns.Spec.Reasons)
		}
	}
	cell := func() (v1alpha1.FleetDriverStatus, error) {
		var groups v1alpha1.FleetGroupList
		if err := env.Client.List(context.Background(), &groups, client.MatchingLabels{controllers.ProfileLabel: "fleetreset"}); err != nil {
			return v1alpha1.FleetDriverStatus{}, err
		}
		if len(groups.Items) != 1 {
			return v1alpha1.FleetDriverStatus{}, fmt.Errorf("%d fleet groups", len(groups.Items))
		}
		for _, c := range groups.Items[0].Status.Drivers {
			if c.Driver == v1alpha1.DriverModernEBPF {
				return c, nil
			}
		}
		return v1alpha1.FleetDriverStatus{}, fmt.Errorf("no modern_ebpf cell in %+v", groups.Items[0].Status)
	}
	eventually(t, 10*time.Second, "modern_ebpf Fails in the matrix", func() error {
		c, err := cell()
		if err == nil && (c.Verdict != v1alpha1.FleetFails || c.Failed != 1 || c.LearnedFrom != "node "+first+" attempt 1") {
			err = fmt.Errorf("cell %+v", c)
		}
		return err
	})

	// The kernel is fixed (say a new sensor build ships the same version): forget, then a new node.
	for _, a := range agents {
		a.mu.Lock()
		a.verdict = always(v1alpha1.SelfTestPassed)
		a.mu.Unlock()
	}
	p := &v1alpha1.SecurityProfile{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(profile), p); err != nil {
		t.Fatal(err)
	}
	base := p.DeepCopy()
	p.Annotations = map[string]string{v1alpha1.FleetForgetBeforeAnnotation: time.Now().Add(time.Second).UTC().Format(time.RFC3339)}
	if err := env.Client.Patch(context.Background(), p, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // past the reset time
	eventually(t, 10*time.Second, "modern_ebpf forgotten", func() error {
		c, err := cell()
		if err == nil {
			err = fmt.Errorf("cell %+v", c)
		}
		if strings.HasPrefix(fmt.Sprint(err), "no modern_ebpf cell") {
			return nil
		}
		return err
	})
	createNodes(t, "fleetreset", "fleetreset-d")
	startAgents(t, 50*time.Millisecond, always(v1alpha1.SelfTestPassed), "fleetreset-d")
	eventually(t, 20*time.Second, "fleetreset-d verified", conditionIs(t, "fleetreset-d", corev1.ConditionTrue, "Verified"))
	if ns := sensorOf(t, "fleetreset-d"); ns.Spec.Driver != v1alpha1.DriverModernEBPF || ns.Spec.Attempt != 1 {
		t.Errorf("fleetreset-d after the reset: driver %s attempt %d, want modern_ebpf at its first attempt", ns.Spec.Driver, ns.Spec.Attempt)
	}
	eventually(t, 10*time.Second, "modern_ebpf Works in the matrix", func() error {
		c, err := cell()
		if err == nil && (c.Verdict != v1alpha1.FleetWorks || c.Passed != 1) {
			err = fmt.Errorf("cell %+v", c)
		}
		return err
	})

	// `kubectl get fleetgroups` shows the matrix: the table the API server serves kubectl.
	row := fleetGroupTable(t, "fleetreset")
	for col, want := range map[string]string{"Profile": "fleetreset", "Kernel": "6.1.0-28-cloud-amd64", "Nodes": "4",
		"modern_ebpf": "Works 1/4", "ebpf": "Works 3/4", "kmod": ""} {
		if got := row[col]; got != want {
			t.Errorf("kubectl get fleetgroups: column %s is %q, want %q (row %v)", col, got, want, row)
		}
	}
}

// fleetGroupTable returns the one row of a profile's FleetGroups as `kubectl get fleetgroups`
// prints it (the server-side table of the CRD's printer columns), by column name.
func fleetGroupTable(t *testing.T, profile string) map[string]string {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.GroupVersion, cfg.APIPath = &v1alpha1.GroupVersion, "/apis"
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(env.Scheme).WithoutConversion()
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	body, err := rc.Get().Resource("fleetgroups").Param("labelSelector", controllers.ProfileLabel+"="+profile).
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("%v: %.300s", err, body)
	}
	var table metav1.Table
	if err := json.Unmarshal(body, &table); err != nil {
		t.Fatalf("%v: %.300s", err, body)
	}
	if len(table.Rows) != 1 {
		t.Fatalf("%d rows in the fleetgroups table, want 1", len(table.Rows))
	}
	row := map[string]string{}
	for i, c := range table.ColumnDefinitions {
		if v := table.Rows[0].Cells[i]; v != nil {
			row[c.Name] = fmt.Sprint(v)
		} else {
			row[c.Name] = ""
		}
	}
	return row
}
