// Package agent is DriverPilot's node agent loop: probe the node, report the facts, wait for the
// manager's driver decision, start the sensor with it, prove detection with the self-test, report
// the verdict, keep a heartbeat, and test again on a new decision, a restart, a new boot and
// every selfTest.interval. It writes only its own NodeSensor's status and its node's heartbeat
// Lease.
package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/driverpilot/driverpilot/agent/falco"
	"github.com/driverpilot/driverpilot/agent/probe"
	"github.com/driverpilot/driverpilot/agent/selftest"
	"github.com/driverpilot/driverpilot/agent/sensor"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/heartbeat"
	"github.com/driverpilot/driverpilot/internal/version"
)

// Options configure an agent.
type Options struct {
	// NodeName is the node this agent runs on; its NodeSensor has the same name.
	NodeName string
	// Client reads the NodeSensor (get, watch) and its node (get), and patches the NodeSensor status.
	Client client.WithWatch
	// Prober measures the node's facts.
	Prober *probe.Prober
	// NewSensor returns a stopped sensor for the NodeSensor's spec (its sensor kind and image);
	// the agent starts it with the decided driver.
	NewSensor func(spec v1alpha1.NodeSensorSpec) (sensor.Sensor, error)
	// WorkDir is where the self-test stages its private overlay.
	WorkDir string
	// Profile is the SecurityProfile whose DaemonSet runs this agent; empty serves any profile.
	Profile string
	// HeartbeatInterval is how often the agent reports it is alive (default DefaultHeartbeat).
	HeartbeatInterval time.Duration
	// LeaseNamespace is where the agent renews its node's heartbeat Lease (package heartbeat);
	// empty, or a Lease the API refuses, falls back to a heartbeat in the NodeSensor status.
	LeaseNamespace string
	// Holder names this agent in its Lease (its pod; default the node name).
	Holder string
	// HealthInterval is how often the agent asks a proven sensor whether it still works
	// (sensor.HealthChecker); the node leaves verified within about this long of the sensor
	// dying (default 2s).
	HealthInterval time.Duration
	// AlertFlowInterval is how often the agent proves, with an exec of its own, that a sensor
	// which reports every exec (Falco: sensor.AllExecsReporter) still delivers its alerts; two
	// misses in a row make it unhealthy (default 60s; each miss waits AlertFlowTimeout, 10s).
	AlertFlowInterval, AlertFlowTimeout time.Duration
	// RetryBackoff is the first wait before a self-test runs again after an inconclusive run or
	// a sensor that died; it doubles up to MaxRetryBackoff (defaults 5s and 5m).
	RetryBackoff, MaxRetryBackoff time.Duration
	// Log receives the agent's progress.
	Log logr.Logger
}

// DefaultHeartbeat is how often an agent renews its heartbeat: three renewals fit in the
// manager's default heartbeat timeout (2m), so two lost ones do not make a node Unknown, and an
// idle node's Lease costs under 1 KiB of writes a minute.
const DefaultHeartbeat = 40 * time.Second

// Agent runs the loop for one node.
type Agent struct {
	opts   Options
	facts  v1alpha1.ProbeFacts
	sensor sensor.Sensor
	// driver is the driver the running sensor was started with, and kind the sensor it is
	// (kind, image, Falco version) as the spec named it.
	driver v1alpha1.Driver
	kind   v1alpha1.SensorSpec
	// tested is the attempt last tested, and when.
	tested   int32
	testedAt time.Time
	// reportedUID is the NodeSensor the facts were last reported to; seenUID the one the
	// decisions were last tested for (a recreated NodeSensor is tested afresh).
	reportedUID, seenUID types.UID
	// epoch and reportedAt (nanoseconds since epoch, monotonic) say when the last status
	// report was written: it is a heartbeat, so the Lease renewal waits an interval after it.
	epoch      time.Time
	reportedAt atomic.Int64
	// active says this agent's profile governs the node, so it heartbeats.
	active atomic.Bool
	// restartWaits counts wakes spent waiting for Falco to restart, per attempt.
	restartWaits map[int32]int
	// proven says the running sensor passed a self-test (or runs on a previous agent's proof),
	// so its health is watched.
	proven bool
	// retryAt, when set, is when the tested attempt runs its self-test again (after an
	// inconclusive run or a dead sensor) instead of waiting for the interval; retry fires then.
	retryAt time.Time
	retry   *time.Timer
	backoff time.Duration
	// flowCheckedAt is when the alert flow was last proven; flowMisses counts misses in a row.
	flowCheckedAt time.Time
	flowMisses    int
	// unreported is a SensorHealthy=False condition whose patch failed; sent again every health
	// check until it lands, so an API hiccup cannot leave a dead sensor's node verified.
	unreported *metav1.Condition
}

// New returns an agent.
func New(o Options) *Agent {
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = DefaultHeartbeat
	}
	if o.HealthInterval <= 0 {
		o.HealthInterval = 2 * time.Second
	}
	if o.Holder == "" {
		o.Holder = o.NodeName
	}

	if o.AlertFlowInterval <= 0 {
		o.AlertFlowInterval = time.Minute
	}
	if o.AlertFlowTimeout <= 0 {
		o.AlertFlowTimeout = 10 * time.Second
	}
	if o.RetryBackoff <= 0 {
		o.RetryBackoff = 5 * time.Second
	}
	if o.MaxRetryBackoff <= 0 {
		o.MaxRetryBackoff = 5 * time.Minute
	}
	return &Agent{opts: o, epoch: time.Now()}
}

// Run runs until ctx ends; it stops the sensor before returning.
func (a *Agent) Run(ctx context.Context) error {
	defer a.stopSensor()
	log := a.opts.Log
	ns, err := a.waitForNodeSensor(ctx)
	if err != nil {
		return err
	}
	a.probeNode(ctx)

	// Heartbeats have their own goroutine: a long self-test or a Falco restart must not make the
	// node look dead (an expired heartbeat also frees the node's rollout slot).
	hbCtx, stopHeartbeats := context.WithCancel(ctx)
	defer stopHeartbeats()
	go a.heartbeats(hbCtx)

	// Re-checks the self-test interval even when the NodeSensor does not change, and reports
	// facts that a failed write left due.
	tick := time.NewTicker(a.opts.HeartbeatInterval)
	defer tick.Stop()
	health := time.NewTicker(a.opts.HealthInterval)
	defer health.Stop()
	defer a.stopRetry()
	for ctx.Err() == nil {
		w, err := a.opts.Client.Watch(ctx, &v1alpha1.NodeSensorList{}, client.MatchingFields{"metadata.name": a.opts.NodeName})
		if err != nil {
			log.Error(err, "Watch failed; retrying")
			if !sleep(ctx, 2*time.Second) {
				break
			}
			continue
		}
		a.follow(ctx, w, ns, tick.C, health.C)
		w.Stop()
	}
	return nil
}

// mine reports whether this agent's profile governs the node (an agent started without a
// profile serves whichever does). The agent of a profile that lost the node to an older one
// stays idle: one sensor and one writer per node.
func (a *Agent) mine(ns *v1alpha1.NodeSensor) bool {
	return a.opts.Profile == "" || ns.Spec.Profile == a.opts.Profile
}

// follow handles one watch until it closes or ctx ends.
func (a *Agent) follow(ctx context.Context, w watch.Interface, ns *v1alpha1.NodeSensor, tick, health <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.ResultChan():
			if !ok {
				return
			}
			got, isNS := ev.Object.(*v1alpha1.NodeSensor)
			if !isNS || ev.Type == watch.Deleted {
				continue
			}
			*ns = *got
			a.active.Store(a.mine(ns))
			if !a.mine(ns) {
				if a.sensor != nil {
					a.opts.Log.Info("Another profile governs this node: sensor stopped", "profile", ns.Spec.Profile)
					a.stopSensor()
				}
				continue
			}
			a.wake(ctx, ns)
		case <-tick:
			if a.mine(ns) {
				a.wake(ctx, ns)
			}
		case <-a.retryC():
			a.retry = nil
			if a.mine(ns) {
				a.wake(ctx, ns)
			}
		case <-health:
			if a.mine(ns) {
				a.watchSensor(ctx, ns)
			}
		}
	}
}

// probeNode measures the node's facts, with its providerID and labels when the node is readable.
func (a *Agent) probeNode(ctx context.Context) {
	in := probe.Inputs{}
	node := &corev1.Node{}
	if err := a.opts.Client.Get(ctx, client.ObjectKey{Name: a.opts.NodeName}, node); err != nil {
		a.opts.Log.Info("Node not readable: cloud provider from DMI only", "error", err.Error())
	} else {
		in.ProviderID, in.Labels = node.Spec.ProviderID, node.Labels
	}
	a.facts = a.opts.Prober.Probe(ctx, in)
	a.opts.Log.Info("Node probed", "kernel", a.facts.Kernel.Release.Value, "btf", a.facts.BTF.Vmlinux.Answer,
		"tpBTF", a.facts.EBPF.TPBTF.Answer, "lockdown", a.facts.Lockdown.Value, "memlock", memlockValue(a.facts.EBPF.Memlock))
}

// memlockValue is the memlock fact for the log: its value, or why it is unknown.
func memlockValue(f *v1alpha1.StringFact) string {
	switch {
	case f == nil:
		return "not measured"
	case f.Value == "":
		return "unknown: " + f.Error
	}
	return f.Value
}

// wake handles one wake for this agent's NodeSensor: it reports the facts when they are due and
// tests the decision when it is new or its interval has passed.
func (a *Agent) wake(ctx context.Context, ns *v1alpha1.NodeSensor) {
	if ns.UID != a.seenUID {
		a.seenUID, a.tested = ns.UID, 0 // a new object (recreated under the same name) is tested afresh
	}
	if ns.Spec.Driver == "" || ns.Status.Probe != nil {
		// The facts go first, alone: with no driver the manager decides on them; over an
		// earlier probe (a new boot, a new agent, a recreated NodeSensor) the manager must see
		// this boot's facts at once, or a previous boot's pass keeps the node verified for the
		// whole self-test.
		if err := a.ensureFacts(ctx, ns); err != nil {
			a.opts.Log.Error(err, "Report probe failed")
			return
		}
	}
	// Only a driver decided before any probe (predicted from similar nodes) lets the facts ride
	// with the verdict, one status write instead of two (report attaches them).
	a.step(ctx, ns)
	// step wrote nothing (kept a proof, Falco restarting, tested already) or its write failed:
	// the facts must not wait for another wake.
	if err := a.ensureFacts(ctx, ns); err != nil {
		a.opts.Log.Error(err, "Report probe failed")
	}
}

// factsDue reports whether ns lacks this agent's facts: a NodeSensor they were not reported to
// (new, or recreated under the same name), or one without a probe.
func (a *Agent) factsDue(ns *v1alpha1.NodeSensor) bool {
	return ns.UID != a.reportedUID || ns.Status.Probe == nil
}

// ensureFacts reports the facts alone to a NodeSensor that lacks them.
func (a *Agent) ensureFacts(ctx context.Context, ns *v1alpha1.NodeSensor) error {
	if !a.factsDue(ns) {
		return nil
	}
	return a.report(ctx, ns, func(*v1alpha1.NodeSensorStatus) {})
}

// WaitForDecision reports the node's facts and heartbeats until this agent's profile has decided
// a driver, and returns that decision. It is the init step of a Falco pod, which must configure
// Falco before Falco starts (and cannot wait in the sidecar, which starts after it).
func (a *Agent) WaitForDecision(ctx context.Context) (v1alpha1.NodeSensorSpec, error) {
	ns, err := a.waitForNodeSensor(ctx)
	if err != nil {
		return v1alpha1.NodeSensorSpec{}, err
	}
	a.probeNode(ctx)
	hbCtx, stopHeartbeats := context.WithCancel(ctx)
	defer stopHeartbeats()
	go a.heartbeats(hbCtx)
	for ctx.Err() == nil {
		w, err := a.opts.Client.Watch(ctx, &v1alpha1.NodeSensorList{}, client.MatchingFields{"metadata.name": a.opts.NodeName})
		if err != nil {
			a.opts.Log.Error(err, "Watch failed; retrying")
			sleep(ctx, 2*time.Second)
			continue
		}
		decided := a.untilDecided(ctx, w, ns)
		w.Stop()
		if decided {
			return ns.Spec, nil
		}
	}
	return v1alpha1.NodeSensorSpec{}, ctx.Err()
}

// untilDecided follows one watch until this agent's profile decides a driver (true), the watch
// closes or ctx ends.
func (a *Agent) untilDecided(ctx context.Context, w watch.Interface, ns *v1alpha1.NodeSensor) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case ev, ok := <-w.ResultChan():
			if !ok {
				return false
			}
			got, isNS := ev.Object.(*v1alpha1.NodeSensor)
			if !isNS || ev.Type == watch.Deleted {
				continue
			}
			*ns = *got
			a.active.Store(a.mine(ns))
			if !a.mine(ns) {
				continue
			}
			// The facts go first even over a driver predicted before any probe (a write the
			// Builtin sensor's agent saves): if Falco or its driver loader then fails, the
			// sidecar may never report, and the manager checks the prediction on these facts.
			if err := a.ensureFacts(ctx, ns); err != nil {
				a.opts.Log.Error(err, "Report probe failed")
				continue
			}
			if ns.Spec.Driver != "" {
				return true
			}
		}
	}
}

// heartbeats renews the node's Lease an interval after the last heartbeat, its own renewal or a
// status report (the manager takes the later of both), while this agent serves the node; a failed
// renewal is tried again after heartbeatRetry, so one lost write does not cost a whole interval
// of the manager's timeout. Where there is no Lease namespace, or the API refuses the Lease
// (manifests older than this agent), it patches status.heartbeatTime instead: a larger write,
// but the node is never left to expire.
func (a *Agent) heartbeats(ctx context.Context) {
	interval := a.opts.HeartbeatInterval
	last := time.Now()
	t := time.NewTimer(interval)
	defer t.Stop()
	useLease := a.opts.LeaseNamespace != ""
	lease := &heartbeat.Renewer{Client: a.opts.Client, Namespace: a.opts.LeaseNamespace, Node: a.opts.NodeName, Holder: a.opts.Holder}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if wait := time.Until(a.lastBeat(last).Add(interval)); wait > 0 {
			t.Reset(wait) // a status report since was a heartbeat: saves a write
			continue
		}
		t.Reset(interval)
		if !a.active.Load() {
			continue
		}
		now := time.Now()
		var err error
		if useLease {
			err = lease.Renew(ctx, now)
			if apierrors.IsForbidden(err) || apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
				a.opts.Log.Error(err, "Heartbeat Lease refused; heartbeats go to the NodeSensor status from now on", "namespace", a.opts.LeaseNamespace)
				useLease = false
			}
		}
		if !useLease {
			patch := fmt.Sprintf(`{"status":{"heartbeatTime":%q,"agentVersion":%q}}`,
				metav1.Now().UTC().Format(time.RFC3339), version.Version)
			ns := &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: a.opts.NodeName}}
			err = a.opts.Client.Status().Patch(ctx, ns, client.RawPatch(types.MergePatchType, []byte(patch)))
		}
		if err != nil {
			if ctx.Err() == nil {
				a.opts.Log.Error(err, "Heartbeat failed; trying again", "in", min(heartbeatRetry, interval))
				t.Reset(min(heartbeatRetry, interval))
			}
			continue
		}
		last = now
	}
}

// lastBeat is the later of the agent's last heartbeat renewal and its last status report.
func (a *Agent) lastBeat(renewed time.Time) time.Time {
	if reported := a.epoch.Add(time.Duration(a.reportedAt.Load())); reported.After(renewed) {
		return reported
	}
	return renewed
}

// heartbeatRetry is how soon a failed heartbeat is tried again.
const heartbeatRetry = 5 * time.Second

// step tests the current decision when it is new or its interval has passed.
func (a *Agent) step(ctx context.Context, ns *v1alpha1.NodeSensor) {
	spec := ns.Spec
	if spec.Driver == "" {
		if a.sensor != nil {
			a.opts.Log.Info("No driver decided: sensor stopped")
			a.stopSensor()
		}
		return
	}
	interval := 24 * time.Hour
	if spec.SelfTest.Interval != nil {
		interval = spec.SelfTest.Interval.Duration
	}
	if spec.Attempt == a.tested {
		if a.retryAt.IsZero() && time.Since(a.testedAt) < interval {
			return
		}
		if !a.retryAt.IsZero() && time.Now().Before(a.retryAt) {
			return // an inconclusive run or a dead sensor: its retry timer is armed
		}
	} else {
		a.backoff = 0 // a new decision starts its own backoff
	}
	a.stopRetry()
	if a.tested == 0 && provenByOtherAgent(ns, a.facts.Kernel.BootID.Value) {
		// After an operator upgrade the old agent's proof stands until the manager, pacing the
		// upgrade like a rollout, asks for a new attempt; meanwhile the sensor keeps running.
		a.keepProof(ctx, ns)
		return
	}
	if a.sensor != nil && (a.driver != spec.Driver || a.kind != spec.Sensor) {
		// Another driver, or another sensor after a profile edit: a new sensor proves the new spec.
		a.stopSensor()
	}
	if a.sensor == nil {
		s, err := a.opts.NewSensor(spec)
		if err != nil {
			a.opts.Log.Error(err, "No sensor for this spec")
			a.reportFailure(ctx, ns, v1alpha1.ReasonSensorUnavailable, err.Error())
			return
		}
		a.sensor, a.driver, a.kind = s, spec.Driver, spec.Sensor
	}
	var timeout time.Duration
	if spec.SelfTest.Timeout != nil {
		timeout = spec.SelfTest.Timeout.Duration
	}
	a.opts.Log.Info("Self-test starting", "driver", spec.Driver, "attempt", spec.Attempt)
	result := selftest.Run(ctx, a.sensor, selftest.Options{
		Driver: spec.Driver, Attempt: spec.Attempt, Checks: spec.SelfTest.Checks, Timeout: timeout, WorkDir: a.opts.WorkDir,
	})
	if ctx.Err() != nil {
		return // interrupted: report nothing rather than a verdict of a cut-short test
	}
	if result.Reason == falco.ReasonFalcoRestarting {
		a.stopSensor()
		if a.restartWaits == nil {
			a.restartWaits = map[int32]int{}
		}
		a.restartWaits[spec.Attempt]++
		if a.restartWaits[spec.Attempt] <= maxRestartWaits {
			// Falco is being restarted with the new driver (this pod goes away): no verdict yet.
			a.opts.Log.Info("Falco restarting with the decided driver; self-test deferred", "driver", spec.Driver)
			return
		}
		// A restart that never completes must not hold a rollout slot forever.
		result.Result = v1alpha1.SelfTestFailed
		result.Reason = "FalcoRestartTimedOut"
		result.Message = fmt.Sprintf("Falco did not come back with driver %s after %d tries: %s", spec.Driver, maxRestartWaits, result.Message)
	}
	a.tested, a.testedAt = spec.Attempt, time.Now()
	a.opts.Log.Info("Self-test finished", "driver", spec.Driver, "attempt", spec.Attempt, "result", result.Result, "reason", result.Reason)
	if result.Result == v1alpha1.SelfTestInconclusive {
		// The sensor lost events: no verdict on the driver. Keep the sensor, try again later.
		delay := a.scheduleRetry()
		a.opts.Log.Info("Self-test inconclusive: events were dropped; trying again", "driver", spec.Driver, "attempt", spec.Attempt,
			"retryIn", delay, "message", result.Message)
		if standingProof(ns, &result) {
			return // an inconclusive run does not take back a pass; the retry settles it
		}
		if err := a.report(ctx, ns, func(st *v1alpha1.NodeSensorStatus) { st.SelfTest = &result }); err != nil {
			a.opts.Log.Error(err, "Report self-test failed")
		}
		return
	}
	a.retryAt, a.backoff = time.Time{}, 0
	health := metav1.Condition{Type: v1alpha1.ConditionSensorHealthy, Status: metav1.ConditionTrue, Reason: "SelfTestPassed",
		Message: fmt.Sprintf("The sensor passed its self-test with driver %s (attempt %d) and is watched every %s", spec.Driver, spec.Attempt, a.opts.HealthInterval)}
	a.proven = result.Result == v1alpha1.SelfTestPassed
	a.flowCheckedAt = time.Now() // the self-test just proved the flow
	if !a.proven {
		// A sensor that cannot prove detection protects nothing; the manager picks the next driver.
		a.stopSensor()
		health.Status, health.Reason = metav1.ConditionFalse, "SelfTestNotPassed"
		health.Message = fmt.Sprintf("The self-test with driver %s (attempt %d) did not pass: %s", spec.Driver, spec.Attempt, result.Reason)
	}
	if err := a.report(ctx, ns, func(st *v1alpha1.NodeSensorStatus) {
		st.SelfTest = &result
		meta.SetStatusCondition(&st.Conditions, health)
	}); err != nil {
		a.opts.Log.Error(err, "Report self-test failed")
		a.tested = 0 // report again on the next wake
		return
	}
	a.unreported = nil // superseded by this verdict
}

// standingProof reports whether the NodeSensor holds a pass for the same driver in the same boot
// as result (this attempt's, or the previous one's while re-verifying).
func standingProof(ns *v1alpha1.NodeSensor, result *v1alpha1.SelfTestStatus) bool {
	t := ns.Status.SelfTest
	return t != nil && t.Result == v1alpha1.SelfTestPassed && t.Driver == result.Driver && t.BootID == result.BootID &&
		(t.Attempt == result.Attempt || t.Attempt == result.Attempt-1)
}

// watchSensor asks a proven sensor whether it still works. When it does not, the agent reports
// SensorHealthy=False at once (the manager then takes the node out of verified), stops the sensor,
// and runs the self-test again with a fresh one after a backoff; only its pass sets the condition
// True again.
func (a *Agent) watchSensor(ctx context.Context, ns *v1alpha1.NodeSensor) {
	if a.unreported != nil {
		a.reportHealth(ctx, ns, *a.unreported)
	}
	if a.sensor == nil || !a.proven {
		return
	}
	err := a.sensorHealth(ctx)
	if err == nil {
		return
	}
	reason := "SensorFailed"
	var he *sensor.HealthError
	if errors.As(err, &he) {
		reason = he.Reason
	}
	a.proven = false
	a.stopSensor()
	delay := a.scheduleRetry()
	a.opts.Log.Info("Sensor stopped working; node reported unhealthy, self-test again", "driver", ns.Spec.Driver,
		"reason", reason, "error", err.Error(), "retryIn", delay)
	cond := metav1.Condition{Type: v1alpha1.ConditionSensorHealthy, Status: metav1.ConditionFalse, Reason: reason,
		Message: v1alpha1.Truncate(fmt.Sprintf("The sensor stopped working (driver %s): %v; a new self-test runs in %s", ns.Spec.Driver, err, delay), 1024)}
	a.reportHealth(ctx, ns, cond)
}

// reportHealth patches the SensorHealthy condition, keeping it for the next health check when
// the patch fails.
func (a *Agent) reportHealth(ctx context.Context, ns *v1alpha1.NodeSensor, cond metav1.Condition) {
	// Without the condition in the base, the patch carries it whatever the local copy says (a
	// failed patch may have landed).
	meta.RemoveStatusCondition(&ns.Status.Conditions, cond.Type)
	if err := a.report(ctx, ns, func(st *v1alpha1.NodeSensorStatus) { meta.SetStatusCondition(&st.Conditions, cond) }); err != nil {
		a.opts.Log.Error(err, "Report sensor health failed; retrying at the next health check")
		a.unreported = &cond
		return
	}
	a.unreported = nil
}

// ReasonAlertFlowStopped: a sensor that reports every exec reported none for the agent's own
// liveness exec, twice in a row.
const ReasonAlertFlowStopped = "AlertFlowStopped"

// sensorHealth asks the sensor whether it works (sensor.HealthChecker) and, every
// AlertFlowInterval, proves the event flow of a sensor that reports every exec.
func (a *Agent) sensorHealth(ctx context.Context) error {
	if hc, ok := a.sensor.(sensor.HealthChecker); ok {
		if err := hc.Health(); err != nil {
			return err
		}
	}
	r, ok := a.sensor.(sensor.AllExecsReporter)
	if !ok || !r.ReportsAllExecs() || time.Since(a.flowCheckedAt) < a.opts.AlertFlowInterval {
		return nil
	}
	a.flowCheckedAt = time.Now()
	dir := a.opts.WorkDir
	if dir == "" {
		dir = os.TempDir()
	}
	if _, err := selftest.ExecAlive(ctx, a.sensor, dir, a.opts.AlertFlowTimeout); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		a.flowMisses++
		a.opts.Log.Info("Sensor reported nothing for the liveness exec", "misses", a.flowMisses, "error", err.Error())
		if a.flowMisses >= 2 {
			return &sensor.HealthError{Reason: ReasonAlertFlowStopped, Err: fmt.Errorf("%d liveness execs in a row: %w", a.flowMisses, err)}
		}
		a.flowCheckedAt = time.Time{} // try again at the next health check
		return nil
	}
	a.flowMisses = 0
	return nil
}

// scheduleRetry arms the retry of the tested attempt after the next backoff and returns it.
func (a *Agent) scheduleRetry() time.Duration {
	if a.backoff == 0 {
		a.backoff = a.opts.RetryBackoff
	} else {
		a.backoff = min(2*a.backoff, a.opts.MaxRetryBackoff)
	}
	a.stopRetry()
	a.retryAt = time.Now().Add(a.backoff)
	a.retry = time.NewTimer(a.backoff)
	return a.backoff
}

func (a *Agent) stopRetry() {
	if a.retry != nil {
		a.retry.Stop()
		a.retry = nil
	}
}

// retryC is the retry timer's channel, nil (never ready) when no retry is armed.
func (a *Agent) retryC() <-chan time.Time {
	if a.retry == nil {
		return nil
	}
	return a.retry.C
}

// maxRestartWaits bounds the wakes an attempt waits for Falco to restart before it fails.
const maxRestartWaits = 10

// provenByOtherAgent reports whether the current decision passed its self-test in this boot
// under another agent version.
func provenByOtherAgent(ns *v1alpha1.NodeSensor, bootID string) bool {
	t := ns.Status.SelfTest
	return t != nil && t.Result == v1alpha1.SelfTestPassed && t.Attempt == ns.Spec.Attempt &&
		t.Driver == ns.Spec.Driver && bootID != "" && t.BootID == bootID && t.AgentVersion != version.Version
}

// keepProof starts the sensor with the proven driver without testing it again.
func (a *Agent) keepProof(ctx context.Context, ns *v1alpha1.NodeSensor) {
	s, err := a.opts.NewSensor(ns.Spec)
	if err == nil {
		err = s.Start(ns.Spec.Driver)
	}
	if err != nil {
		a.reportFailure(ctx, ns, "SensorLoadFailed", err.Error())
		return
	}
	a.sensor, a.driver, a.kind = s, ns.Spec.Driver, ns.Spec.Sensor
	a.tested, a.testedAt = ns.Spec.Attempt, time.Now()
	a.proven = true
	a.opts.Log.Info("Sensor started on the proof of a previous agent; waiting for the manager to ask for re-verification",
		"driver", ns.Spec.Driver, "provedBy", ns.Status.SelfTest.AgentVersion)
}

// reportFailure reports a failed self-test for the current attempt without running one.
func (a *Agent) reportFailure(ctx context.Context, ns *v1alpha1.NodeSensor, reason, msg string) {
	now := metav1.Now()
	result := v1alpha1.SelfTestStatus{
		Driver: ns.Spec.Driver, Attempt: ns.Spec.Attempt, Result: v1alpha1.SelfTestFailed,
		Reason: reason, Message: msg, StartTime: &now, FinishTime: &now,
		BootID: a.facts.Kernel.BootID.Value, AgentVersion: version.Version,
	}
	a.tested, a.testedAt = ns.Spec.Attempt, time.Now()
	if err := a.report(ctx, ns, func(st *v1alpha1.NodeSensorStatus) { st.SelfTest = &result }); err != nil {
		a.opts.Log.Error(err, "Report self-test failed")
		a.tested = 0
	}
}

// report patches the NodeSensor status with a change and a fresh heartbeat, and with the facts
// when they are due, so they ride with whatever is reported first.
func (a *Agent) report(ctx context.Context, ns *v1alpha1.NodeSensor, change func(*v1alpha1.NodeSensorStatus)) error {
	base := ns.DeepCopy()
	facts := a.factsDue(ns)
	change(&ns.Status)
	if facts {
		ns.Status.Probe = &a.facts
	}
	now := metav1.Now()
	ns.Status.HeartbeatTime = &now
	ns.Status.AgentVersion = version.Version
	ns.Status.Clamp()
	if err := a.opts.Client.Status().Patch(ctx, ns, client.MergeFrom(base)); err != nil {
		// Back to the last known state: a change left in the local copy would be missing from
		// the next patch (the facts above all).
		*ns = *base
		return fmt.Errorf("patch node sensor status: %w", err)
	}
	if facts {
		a.reportedUID = ns.UID
	}
	a.reportedAt.Store(int64(now.Sub(a.epoch)))
	return nil
}

// waitForNodeSensor waits until the manager created this node's NodeSensor. It watches rather
// than polls: the manager may hold a node's NodeSensor back for minutes, and thousands of agents
// polling meanwhile would load the API server.
func (a *Agent) waitForNodeSensor(ctx context.Context) (*v1alpha1.NodeSensor, error) {
	logged := false
	var backoff time.Duration
	for {
		ns := &v1alpha1.NodeSensor{}
		err := a.opts.Client.Get(ctx, client.ObjectKey{Name: a.opts.NodeName}, ns)
		if err == nil {
			return ns, nil
		}
		if !logged {
			a.opts.Log.Info("Waiting for this node's NodeSensor", "node", a.opts.NodeName, "error", err.Error())
			logged = true
		}
		if apierrors.IsNotFound(err) {
			got, watched, werr := a.watchForNodeSensor(ctx)
			if got != nil {
				return got, nil
			}
			if watched {
				backoff = 0 // the watch worked (and closed, as watches do): Get again soon
			}
			if werr != nil {
				err = werr
			}
		}
		if backoff == 0 {
			backoff = time.Second
		} else {
			backoff = min(2*backoff, 30*time.Second)
		}
		if !sleep(ctx, backoff) {
			return nil, errors.Join(ctx.Err(), err)
		}
	}
}

// watchForNodeSensor watches for this node's NodeSensor until it arrives (returned), the watch
// closes or ctx ends; watched says a watch was open (for a while) and ended without an error. The watch has no
// resourceVersion, so the API server first sends an object that already exists: one created
// since the Get is not missed.
func (a *Agent) watchForNodeSensor(ctx context.Context) (ns *v1alpha1.NodeSensor, watched bool, err error) {
	w, err := a.opts.Client.Watch(ctx, &v1alpha1.NodeSensorList{}, client.MatchingFields{"metadata.name": a.opts.NodeName})
	if err != nil {
		return nil, false, err
	}
	defer w.Stop()
	opened := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil, true, ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok {
				// Only a watch that lasted counts as working: one closed at once must not
				// make every agent open a watch a second.
				return nil, time.Since(opened) >= 10*time.Second, nil
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				if got, isNS := ev.Object.(*v1alpha1.NodeSensor); isNS {
					return got.DeepCopy(), true, nil
				}
			case watch.Error:
				return nil, false, apierrors.FromObject(ev.Object)
			}
		}
	}
}

func (a *Agent) stopSensor() {
	if a.sensor == nil {
		return
	}
	if err := a.sensor.Close(); err != nil {
		a.opts.Log.Error(err, "Stop sensor")
	}
	a.sensor, a.driver, a.kind, a.proven = nil, "", v1alpha1.SensorSpec{}, false
	a.flowMisses = 0
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
