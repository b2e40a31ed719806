package controllers

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/nodestate"
	"github.com/driverpilot/driverpilot/internal/rollout"
	"github.com/driverpilot/driverpilot/internal/selection"
)

// +kubebuilder:rbac:groups=security.driverpilot.io,resources=fleetgroups,verbs=get;list;watch;create;update;patch;delete;deletecollection

// maxFleetGroups bounds the FleetGroup objects of one profile: the most populous groups are
// written, the others only counted in status.fleet.
const maxFleetGroups = 256

// fleetView is what a profile's nodes learned from each other, rebuilt from the NodeSensors on
// every pass (their failed attempts and standing passes are the memory; nothing else is kept).
type fleetView struct {
	// learning is spec.fleet.learning: off, nothing is shared and no group is gated, but the
	// matrix is still written.
	learning bool
	key      map[string]selection.GroupKey // node -> its group
	groups   map[string]*fleetGroup        // group key -> group
}

type fleetGroup struct {
	key      selection.GroupKey
	nodes    []string
	verified int
	// open says the group's rest may start: a node is verified under the current spec.
	open     bool
	first    selection.Evidence // the earliest standing pass
	verdicts selection.GroupVerdicts
}

// learnFleet groups the profile's nodes and learns each group's verdicts from their failed
// attempts on their current kernel (recorded, or reported and not yet recorded) and the passes
// that stand now under the profile's current sensor.
func (r *SecurityProfileReconciler) learnFleet(ctx context.Context, profile *v1alpha1.SecurityProfile, sensors map[string]*v1alpha1.NodeSensor, now time.Time) *fleetView {
	v := &fleetView{learning: profile.Spec.Fleet.LearningOn(), key: map[string]selection.GroupKey{}, groups: map[string]*fleetGroup{}}
	sensor := selection.SensorName(profile.Spec.Sensor, r.AgentVersion)
	evidence := map[string][]selection.Evidence{}
	for name, ns := range sensors {
		if ns.Status.Probe == nil {
			continue
		}
		key, ok := selection.KeyOf(*ns.Status.Probe, sensor)
		if !ok {
			continue
		}
		v.key[name] = key
		g := v.groups[key.String()]
		if g == nil {
			g = &fleetGroup{key: key}
			v.groups[key.String()] = g
		}
		g.nodes = append(g.nodes, name)
		evidence[key.String()] = append(evidence[key.String()], nodeEvidence(ns, profile, sensor, r.AgentVersion, now, r.HeartbeatTimeout)...)
	}
	forget := forgetBefore(ctx, profile)
	for k, g := range v.groups {
		slices.Sort(g.nodes)
		g.verdicts = selection.Learn(evidence[k], len(g.nodes), forget)
		for _, e := range evidence[k] {
			if e.Passed {
				g.verified++
				if g.first.Node == "" || e.Time.Before(g.first.Time) {
					g.first = e
				}
			}
		}
		g.open = g.verified > 0
	}
	return v
}

// nodeEvidence is what one node tells its group: each failed attempt on its current kernel, the
// failure it reports now and the manager has not recorded yet, and its pass when it is verified
// now under the profile's current sensor and agent.
func nodeEvidence(ns *v1alpha1.NodeSensor, profile *v1alpha1.SecurityProfile, sensor, agentVersion string, now time.Time, timeout time.Duration) []selection.Evidence {
	var out []selection.Evidence
	release := ns.Status.Probe.Kernel.Release.Value
	for _, f := range onKernel(ns.Spec.FailedAttempts, release) {
		// A failure under another sensor or sensor version says nothing about this group (one
		// recorded before the sensor was recorded, by an older manager, counts).
		if f.Sensor == "" || f.Sensor == sensor {
			out = append(out, selection.Evidence{Node: ns.Name, Driver: f.Driver, Attempt: f.Attempt, Reason: f.Reason, Time: f.Time.Time})
		}
	}
	t := ns.Status.SelfTest
	switch nodestate.Classify(ns, now, timeout) {
	case nodestate.AttemptFailed:
		recorded := slices.ContainsFunc(ns.Spec.FailedAttempts, func(f v1alpha1.FailedAttempt) bool { return f.Attempt == ns.Spec.Attempt })
		if !recorded && testedSensor(ns, agentVersion) == sensor {
			out = append(out, selection.Evidence{Node: ns.Name, Driver: ns.Spec.Driver, Attempt: ns.Spec.Attempt,
				Reason: t.Reason + ": " + t.Message, Time: finishTime(t, now)})
		}
	case nodestate.Verified:
		if ns.Spec.Sensor == profile.Spec.Sensor && !nodestate.ProvedByOlderAgent(ns, agentVersion) {
			out = append(out, selection.Evidence{Node: ns.Name, Driver: ns.Spec.Driver, Attempt: ns.Spec.Attempt, Passed: true, Time: finishTime(t, now)})
		}
	}
	return out
}

// testedSensor names the sensor a node's last self-test ran, as its group's key names it: the
// spec's sensor, and for the built-in sensor the version of the agent that ran it.
func testedSensor(ns *v1alpha1.NodeSensor, agentVersion string) string {
	if t := ns.Status.SelfTest; agentVersion != "" && t != nil && t.AgentVersion != "" {
		agentVersion = t.AgentVersion
	}
	return selection.SensorName(ns.Spec.Sensor, agentVersion)
}

func finishTime(t *v1alpha1.SelfTestStatus, now time.Time) time.Time {
	if t.FinishTime != nil {
		return t.FinishTime.Time
	}
	return now
}

// forgetBefore reads the profile's fleet reset annotation; a value that is no RFC 3339 time
// forgets nothing (and says so in the log).
func forgetBefore(ctx context.Context, profile *v1alpha1.SecurityProfile) time.Time {
	s, ok := profile.Annotations[v1alpha1.FleetForgetBeforeAnnotation]
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		log.FromContext(ctx).Info("Fleet reset annotation is not an RFC 3339 time; nothing forgotten", "annotation", v1alpha1.FleetForgetBeforeAnnotation, "value", s)
		return time.Time{}
	}
	return t
}

// apply adds what the node's group learned to its decision (nothing when learning is off).
func (v *fleetView) apply(d selection.Decision, node string) selection.Decision {
	if v == nil || !v.learning {
		return d
	}
	key, ok := v.key[node]
	if !ok {
		return d
	}
	return selection.ApplyLearned(d, v.groups[key.String()].verdicts, key, node)
}

// gates are the rollout's per-group canaries (none when learning is off): which nodes are in
// which group, which groups have a verified node, which waiting nodes would try a driver that
// awaits agreement in their group (decisions) and which nodes in flight do. released are the
// nodes in flight that no longer hold their group back.
func (v *fleetView) gates(nodes []nodestate.Node, decisions map[string]selection.Decision, released map[string]bool) rollout.Groups {
	if v == nil || !v.learning {
		return rollout.Groups{}
	}
	g := rollout.Groups{Of: make(map[string]string, len(v.key)), Open: map[string]bool{}, Suspect: map[string]bool{},
		Trying: map[string]bool{}, Released: released}
	for node, key := range v.key {
		g.Of[node] = key.String()
	}
	for k, grp := range v.groups {
		g.Open[k] = grp.open
	}
	awaits := func(node string, d v1alpha1.Driver) bool {
		key, ok := v.key[node]
		return ok && d != "" && v.groups[key.String()].verdicts[d].Verdict == v1alpha1.FleetAwaitingAgreement
	}
	for _, n := range nodes {
		if d, ok := decisions[n.Name]; ok && n.Phase.Waiting() && awaits(n.Name, d.Driver) {
			g.Suspect[n.Name] = true
		}
		if (n.Phase.InFlight() || n.Stalled) && awaits(n.Name, n.Driver) {
			g.Trying[n.Name] = true
		}
	}
	return g
}

// verifyClock remembers since when each node verifies its current attempt, in memory (a manager
// restart starts the clocks again).
type verifyClock struct {
	mu    sync.Mutex
	since map[string]verifyStart
}

type verifyStart struct {
	uid     types.UID
	attempt int32
	at      time.Time
}

// groupPatience is how long a node may verify one attempt before it no longer holds its group's
// other nodes back: time enough for a self-test and a Falco restart.
func (r *SecurityProfileReconciler) groupPatience() time.Duration {
	return max(2*r.HeartbeatTimeout, 2*time.Minute)
}

// released returns the nodes of the pass that verify but no longer hold their group back: those
// whose agent answered the current attempt without a proof or a failure (an inconclusive run, a
// verdict for another boot), and those verifying one attempt for longer than groupPatience.
// Nodes that no longer verify are forgotten.
func (r *SecurityProfileReconciler) released(nodes []nodestate.Node, sensors map[string]*v1alpha1.NodeSensor, now time.Time) map[string]bool {
	c := &r.verifying
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.since == nil {
		c.since = map[string]verifyStart{}
	}
	out := map[string]bool{}
	for _, n := range nodes {
		ns := sensors[n.Name]
		if !(n.Phase.InFlight() || n.Stalled) {
			delete(c.since, n.Name)
			continue
		}
		s, ok := c.since[n.Name]
		if !ok || s.uid != ns.UID || s.attempt != ns.Spec.Attempt {
			s = verifyStart{uid: ns.UID, attempt: ns.Spec.Attempt, at: now}
			c.since[n.Name] = s
		}
		t := ns.Status.SelfTest
		answered := n.Phase == nodestate.Verifying && t != nil && t.Attempt == ns.Spec.Attempt && t.Driver == ns.Spec.Driver
		if answered || now.Sub(s.at) > r.groupPatience() {
			out[n.Name] = true
		}
	}
	return out
}

// forget drops a node that left the profile.
func (c *verifyClock) forget(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.since, node)
}

// counts are the profile's status.fleet.
func (v *fleetView) counts() *v1alpha1.FleetCounts {
	c := &v1alpha1.FleetCounts{Groups: int32(len(v.groups))}
	for _, g := range v.groups {
		for _, d := range g.verdicts {
			switch d.Verdict {
			case v1alpha1.FleetFails:
				c.LearnedFailures++
			case v1alpha1.FleetAwaitingAgreement:
				c.AwaitingAgreement++
			}
		}
	}
	return c
}

// fleetGroupName names a group's object after its profile and a hash of its key.
func fleetGroupName(profile string, key selection.GroupKey) string {
	sum := sha256.Sum256([]byte(key.String()))
	return v1alpha1.Truncate(profile, 242) + "-" + hex.EncodeToString(sum[:])[:10]
}

// fleetGroups are the profile's matrix: one FleetGroup per group, the most populous first
// (maxFleetGroups of them).
func (v *fleetView) fleetGroups(profile *v1alpha1.SecurityProfile) []*v1alpha1.FleetGroup {
	groups := make([]*fleetGroup, 0, len(v.groups))
	for _, g := range v.groups {
		groups = append(groups, g)
	}
	slices.SortFunc(groups, func(a, b *fleetGroup) int {
		return cmp.Or(cmp.Compare(len(b.nodes), len(a.nodes)), cmp.Compare(a.key.String(), b.key.String()))
	})
	if len(groups) > maxFleetGroups {
		groups = groups[:maxFleetGroups]
	}
	out := make([]*v1alpha1.FleetGroup, 0, len(groups))
	for _, g := range groups {
		fg := &v1alpha1.FleetGroup{
			ObjectMeta: metav1.ObjectMeta{
				Name:   fleetGroupName(profile.Name, g.key),
				Labels: map[string]string{ProfileLabel: profile.Name},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: v1alpha1.GroupVersion.String(), Kind: "SecurityProfile",
					Name: profile.Name, UID: profile.UID}},
			},
			Spec: v1alpha1.FleetGroupSpec{Profile: profile.Name, KernelRelease: v1alpha1.Truncate(g.key.KernelRelease, 256),
				Architecture: v1alpha1.Truncate(g.key.Architecture, 64), Distro: v1alpha1.Truncate(g.key.Distro, 129), Sensor: v1alpha1.Truncate(g.key.Sensor, 600)},
			Status: v1alpha1.FleetGroupStatus{Nodes: int32(len(g.nodes)), Verified: int32(g.verified), FirstNode: g.first.Node},
		}
		for _, d := range v1alpha1.AllDrivers {
			verdict, ok := g.verdicts[d]
			if !ok {
				continue
			}
			fg.Status.Drivers = append(fg.Status.Drivers, driverCell(verdict, len(g.nodes)))
		}
		out = append(out, fg)
	}
	return out
}

// driverCell is one matrix cell.
func driverCell(v selection.DriverVerdict, size int) v1alpha1.FleetDriverStatus {
	c := v1alpha1.FleetDriverStatus{Driver: v.Driver, Verdict: v.Verdict, Passed: int32(v.Passed), Failed: int32(v.Failed), OtherFailures: int32(v.OtherFailures)}
	if v.From.Node != "" {
		c.LearnedFrom = v1alpha1.Truncate(fmt.Sprintf("node %s attempt %d", v.From.Node, v.From.Attempt), 300)
		if !v.From.Passed {
			c.Reason = v1alpha1.Truncate(v.From.Reason, 1024)
		}
	}
	switch v.Verdict {
	case v1alpha1.FleetWorks:
		c.Summary = fmt.Sprintf("Works %d/%d", v.Passed, size)
	case v1alpha1.FleetFails:
		c.Summary = fmt.Sprintf("Fails %d/%d %s", v.Failed, size, selection.ReasonOf(v.From.Reason))
	case v1alpha1.FleetAwaitingAgreement:
		c.Summary = fmt.Sprintf("Failed 1/%d, awaiting agreement", size)
	case v1alpha1.FleetMixed:
		c.Summary = fmt.Sprintf("Mixed %d passed %d failed", v.Passed, v.Failed)
	default:
		c.Summary = "Untested"
		if v.OtherFailures > 0 {
			c.Summary = fmt.Sprintf("Untested (%d timeout/node-local)", v.OtherFailures)
		}
	}
	c.Summary = v1alpha1.Truncate(c.Summary, 64)
	return c
}

// syncFleetGroups writes the profile's matrix: a FleetGroup per group, created or patched when
// it changed, and those of groups that are gone deleted. The manager is their only writer.
func (r *SecurityProfileReconciler) syncFleetGroups(ctx context.Context, profile *v1alpha1.SecurityProfile, v *fleetView) error {
	if v == nil {
		return nil
	}
	// Read from the API server, not the cache: the counts go up and down (a heartbeat expires),
	// and a stale copy equal to the new counts would skip a write the server needs.
	var list v1alpha1.FleetGroupList
	if err := r.reader().List(ctx, &list, client.MatchingLabels{ProfileLabel: profile.Name}); err != nil {
		return fmt.Errorf("list fleet groups: %w", err)
	}
	have := map[string]*v1alpha1.FleetGroup{}
	for i := range list.Items {
		have[list.Items[i].Name] = &list.Items[i]
	}
	var errs []error
	for _, want := range v.fleetGroups(profile) {
		cur, ok := have[want.Name]
		delete(have, want.Name)
		switch {
		case !ok:
			if err := r.Create(ctx, want); err != nil && !apierrors.IsAlreadyExists(err) {
				errs = append(errs, fmt.Errorf("create fleet group %s: %w", want.Name, err))
			}
		case !equality.Semantic.DeepEqual(cur.Spec, want.Spec) || !equality.Semantic.DeepEqual(cur.Status, want.Status):
			base := cur.DeepCopy()
			cur.Spec, cur.Status = want.Spec, want.Status
			if err := r.Patch(ctx, cur, client.MergeFrom(base)); client.IgnoreNotFound(err) != nil {
				errs = append(errs, fmt.Errorf("write fleet group %s: %w", cur.Name, err))
			}
		}
	}
	for _, stale := range have {
		if err := r.Delete(ctx, stale); client.IgnoreNotFound(err) != nil {
			errs = append(errs, fmt.Errorf("delete fleet group %s: %w", stale.Name, err))
		}
	}
	return errors.Join(errs...)
}

// deleteFleetGroups removes a deleted profile's matrix (a garbage collector would too, by the
// owner reference; a cluster without one must not keep them).
func (r *SecurityProfileReconciler) deleteFleetGroups(ctx context.Context, profile *v1alpha1.SecurityProfile) error {
	if err := r.DeleteAllOf(ctx, &v1alpha1.FleetGroup{}, client.MatchingLabels{ProfileLabel: profile.Name}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete fleet groups: %w", err)
	}
	return nil
}
