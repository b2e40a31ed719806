package selftest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/version"
)

// Reasons of a SelfTestStatus that did not pass (besides the sensor's own start reasons).
const (
	ReasonAllChecksPassed = "AllChecksPassed"
	ReasonCheckFailed     = "CheckFailed"
	// ReasonCheckTimedOut: at least one check saw no event within the timeout.
	ReasonCheckTimedOut = "CheckTimedOut"
	ReasonNotApplicable = "ChecksNotApplicable"
	ReasonInterrupted   = "Interrupted"
	ReasonInvalidInput  = "InvalidInput"
	// ReasonEventsDropped: a check saw no event while the sensor was losing events; the run is
	// Inconclusive.
	ReasonEventsDropped = "EventsDropped"
	// ReasonSensorConfigFailed: the sensor could not be asked for lower-layer events.
	ReasonSensorConfigFailed = "SensorConfigFailed"
)

// DefaultTimeout is how long a check waits for its event.
const DefaultTimeout = 5 * time.Second

// maxMessage is SelfTestStatus.message's API limit.
const maxMessage = 4096

// Options configure a self-test run.
type Options struct {
	// Driver is the driver the sensor is started with.
	Driver v1alpha1.Driver
	// Attempt is the NodeSensor spec.attempt the result answers.
	Attempt int32
	// Checks to run, in order; empty means every check.
	Checks []v1alpha1.CheckName
	// Timeout is how long each check waits for its event (default DefaultTimeout).
	Timeout time.Duration
	// WorkDir is where the private overlay is staged (default os.TempDir()).
	WorkDir string
	// BootIDPath is read for the boot ID (default /proc/sys/kernel/random/boot_id).
	BootIDPath string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// DropGrace is how long the self-test waits, when a check saw no event, before it reads the
	// sensor's drop count a last time: drops are reported late (the built-in reader within its
	// flush interval, Falco's drop alerts about once a second). Default 1.5s.
	DropGrace time.Duration
	// RunID names this run's executables dp-<RunID>-<check>; empty means 8 random hex digits.
	// A caller that sets it must keep it unique per run: events are matched by these names.
	RunID string
}

// check is one staged exec and what the sensor must report for it.
type check struct {
	name     v1alpha1.CheckName
	exe      string // unique executable name of this run
	expected string
}

// Run starts s with opts.Driver (a no-op when it already runs with it), runs the checks and
// returns the verdict. It does not close s: the caller owns the sensor. Every mount and file it
// creates is removed before it returns, also when ctx is cancelled.
func Run(ctx context.Context, s sensor.Sensor, opts Options) v1alpha1.SelfTestStatus {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.WorkDir == "" {
		opts.WorkDir = os.TempDir()
	}
	if opts.DropGrace <= 0 {
		opts.DropGrace = 1500 * time.Millisecond
	}
	if opts.BootIDPath == "" {
		opts.BootIDPath = "/proc/sys/kernel/random/boot_id"
	}
	if len(opts.Checks) == 0 {
		opts.Checks = v1alpha1.AllChecks
	}
	start := opts.Now()
	st := v1alpha1.SelfTestStatus{
		Driver:       opts.Driver,
		Attempt:      opts.Attempt,
		StartTime:    &metav1.Time{Time: start},
		AgentVersion: version.Version,
	}
	if b, err := os.ReadFile(opts.BootIDPath); err == nil {
		st.BootID = strings.TrimSpace(string(b))
	}
	finish := func(result v1alpha1.SelfTestResult, reason, msg string) v1alpha1.SelfTestStatus {
		st.Result, st.Reason, st.Message = result, reason, truncateFront(msg, maxMessage)
		st.FinishTime = &metav1.Time{Time: opts.Now()}
		return st
	}

	checks, err := plan(opts.Checks, opts.RunID)
	if err != nil {
		return finish(v1alpha1.SelfTestFailed, ReasonInvalidInput, err.Error())
	}

	if err := s.Start(opts.Driver); err != nil {
		reason := sensor.ReasonSensorLoadFailed
		var se *sensor.Error
		if errors.As(err, &se) {
			reason = se.Reason
		}
		msg := err.Error()
		if tail := sensor.VerifierLogTail(err, 40); tail != "" {
			msg += "\nverifier log (end):\n" + tail
		}
		return finish(v1alpha1.SelfTestFailed, reason, msg)
	}
	sensorReady := opts.Now()
	events, unsubscribe := s.Subscribe()
	defer unsubscribe()
	if lr, ok := s.(sensor.LowerLayerRequester); ok {
		release, err := lr.RequestLowerLayer()
		if err != nil {
			return finish(v1alpha1.SelfTestFailed, ReasonSensorConfigFailed, err.Error())
		}
		defer release()
	}
	dc, countsDrops := s.(sensor.DropCounter)
	var dropsBefore sensor.Drops
	if countsDrops {
		dropsBefore = dc.Drops()
	}

	r := &runner{opts: opts, events: events, seen: map[string]sensor.Event{}}
	cleanup := r.stage(checks)
	for _, c := range checks {
		if ctx.Err() != nil {
			st.Checks = append(st.Checks, v1alpha1.CheckResult{Name: c.name, Result: v1alpha1.SelfTestFailed,
				Expected: c.expected, Message: "not run: " + ctx.Err().Error()})
			continue
		}
		st.Checks = append(st.Checks, r.run(ctx, c))
	}
	checksDone := opts.Now()
	var drops sensor.Drops
	if countsDrops {
		if missedEvent(st.Checks) && ctx.Err() == nil {
			sleepCtx(ctx, opts.DropGrace)
		}
		drops = dc.Drops().Sub(dropsBefore)
		inconclusive(st.Checks, drops)
	}
	cleanupErr := cleanup()

	result, reason, summary := verdict(st.Checks)
	if ctx.Err() != nil && result != v1alpha1.SelfTestPassed {
		result, reason = v1alpha1.SelfTestFailed, ReasonInterrupted
	}
	msg := fmt.Sprintf("%s; sensor start %s, checks %s, cleanup %s; %s", summary,
		sensorReady.Sub(start).Round(time.Microsecond), checksDone.Sub(sensorReady).Round(time.Microsecond),
		opts.Now().Sub(checksDone).Round(time.Microsecond), r.stagedOn)
	if countsDrops {
		msg += "; events lost during the run: " + drops.String()
	}
	if cleanupErr != nil {
		msg += "; cleanup: " + cleanupErr.Error()
	}
	return finish(result, reason, msg)
}

// plan assigns each requested check a unique executable name.
func plan(names []v1alpha1.CheckName, run string) ([]check, error) {
	if run == "" {
		var rnd [4]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, fmt.Errorf("random run id: %w", err)
		}
		run = hex.EncodeToString(rnd[:])
	}
	// The memfd check's event name is "memfd:dp-<run>-memfd", within the event's 63 bytes.
	if len(run) > 32 || strings.ContainsAny(run, "/\x00") {
		return nil, fmt.Errorf("run id %q: at most 32 bytes, no '/' or NUL", run)
	}
	seen := map[v1alpha1.CheckName]bool{}
	var checks []check
	for _, n := range names {
		if seen[n] {
			return nil, fmt.Errorf("check %s requested twice", n)
		}
		seen[n] = true
		c := check{name: n}
		switch n {
		case v1alpha1.CheckExeUpperLayer:
			c.exe, c.expected = "dp-"+run+"-upper", "upper layer"
		case v1alpha1.CheckExeLowerLayer:
			c.exe, c.expected = "dp-"+run+"-lower", "lower layer"
		case v1alpha1.CheckExeCopyUp:
			c.exe, c.expected = "dp-"+run+"-copyup", "upper layer"
		case v1alpha1.CheckExeFromMemfd:
			c.exe, c.expected = "dp-"+run+"-memfd", "from memfd, neither layer"
		default:
			return nil, fmt.Errorf("unknown check %q (known: %v)", n, v1alpha1.AllChecks)
		}
		checks = append(checks, c)
	}
	return checks, nil
}

// inconclusive turns the checks that saw no event into Inconclusive ones when the sensor lost
// events meanwhile: the missing event may be one of them, so the miss proves nothing about the
// driver. A check that saw a wrong event stays Failed: a drop loses events, it does not change them.
func inconclusive(checks []v1alpha1.CheckResult, drops sensor.Drops) {
	if drops.Total() == 0 {
		return
	}
	for i := range checks {
		c := &checks[i]
		if c.Result == v1alpha1.SelfTestFailed && strings.HasPrefix(c.Observed, "no event") {
			c.Result = v1alpha1.SelfTestInconclusive
			c.Message += fmt.Sprintf("; the sensor lost %d events meanwhile (%s)", drops.Total(), drops)
		}
	}
}

// missedEvent reports whether a check failed for want of an event.
func missedEvent(checks []v1alpha1.CheckResult) bool {
	for _, c := range checks {
		if c.Result == v1alpha1.SelfTestFailed && strings.HasPrefix(c.Observed, "no event") {
			return true
		}
	}
	return false
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// verdict rolls the checks up: Passed only when every check passed; any failure fails; else a
// check without an event because of drops makes the run Inconclusive; else NotApplicable.
func verdict(checks []v1alpha1.CheckResult) (v1alpha1.SelfTestResult, string, string) {
	var failed, na, timedOut, unsure []string
	for _, c := range checks {
		switch c.Result {
		case v1alpha1.SelfTestInconclusive:
			unsure = append(unsure, fmt.Sprintf("%s: %s", c.Name, c.Message))
		case v1alpha1.SelfTestFailed:
			failed = append(failed, fmt.Sprintf("%s: %s", c.Name, firstNonEmpty(c.Message, c.Observed)))
			if strings.HasPrefix(c.Observed, "no event") {
				timedOut = append(timedOut, string(c.Name))
			}
		case v1alpha1.SelfTestNotApplicable:
			na = append(na, fmt.Sprintf("%s: %s", c.Name, c.Message))
		}
	}
	switch {
	case len(failed) > 0:
		reason := ReasonCheckFailed
		if len(timedOut) > 0 {
			reason = ReasonCheckTimedOut
		}
		return v1alpha1.SelfTestFailed, reason, fmt.Sprintf("%d of %d checks failed: %s", len(failed), len(checks), strings.Join(failed, "; "))
	case len(unsure) > 0:
		return v1alpha1.SelfTestInconclusive, ReasonEventsDropped, fmt.Sprintf("%d of %d checks inconclusive: %s", len(unsure), len(checks), strings.Join(unsure, "; "))
	case len(na) > 0:
		return v1alpha1.SelfTestNotApplicable, ReasonNotApplicable, fmt.Sprintf("%d of %d checks not applicable: %s", len(na), len(checks), strings.Join(na, "; "))
	case len(checks) == 0:
		return v1alpha1.SelfTestNotApplicable, ReasonNotApplicable, "no checks requested"
	}
	return v1alpha1.SelfTestPassed, ReasonAllChecksPassed, fmt.Sprintf("all %d checks passed", len(checks))
}

// runner executes the checks of one run and collects their events.
type runner struct {
	opts     Options
	events   <-chan sensor.Event
	seen     map[string]sensor.Event // events that arrived while waiting for another name
	stagedOn string
	helper   []byte
	overlay  *overlayStage
	stageErr error
}

// stage builds the private overlay for the overlay checks. Its error is kept: those checks then
// report NotApplicable with it, and the memfd check still runs.
func (r *runner) stage(checks []check) (cleanup func() error) {
	r.helper, r.stageErr = helperBinary()
	if r.stageErr != nil {
		r.stagedOn = "nothing staged"
		return func() error { return nil }
	}
	var lower []string
	needOverlay := false
	for _, c := range checks {
		switch c.name {
		case v1alpha1.CheckExeLowerLayer, v1alpha1.CheckExeCopyUp:
			lower = append(lower, c.exe)
			needOverlay = true
		case v1alpha1.CheckExeUpperLayer:
			needOverlay = true
		}
	}
	if !needOverlay {
		r.stagedOn = "no overlay needed"
		return func() error { return nil }
	}
	r.overlay, r.stageErr = newOverlayStage(r.opts.WorkDir, r.helper, lower)
	if r.stageErr != nil {
		r.stagedOn = "overlay staging failed"
		return func() error { return nil }
	}
	r.stagedOn = fmt.Sprintf("private overlay at %s on %s", r.overlay.merged, r.overlay.backing)
	if m, err := statfsMagic("/"); err == nil {
		r.stagedOn += fmt.Sprintf(" (root filesystem %s)", fsName(m))
	}
	return r.overlay.close
}

// run stages, executes and judges one check.
func (r *runner) run(ctx context.Context, c check) v1alpha1.CheckResult {
	res := v1alpha1.CheckResult{Name: c.name, Expected: c.expected}
	notApplicable := func(err error) v1alpha1.CheckResult {
		res.Result, res.Message = v1alpha1.SelfTestNotApplicable, "could not stage: "+err.Error()
		return res
	}
	if r.helper == nil {
		return notApplicable(r.stageErr)
	}
	if c.name != v1alpha1.CheckExeFromMemfd && r.overlay == nil {
		return notApplicable(r.stageErr)
	}

	var (
		path    string
		match   = c.exe
		release = func() {}
	)
	switch c.name {
	case v1alpha1.CheckExeUpperLayer:
		if err := r.overlay.writeUpper(c.exe, r.helper); err != nil {
			return notApplicable(err)
		}
		path = r.overlay.path(c.exe)
	case v1alpha1.CheckExeLowerLayer:
		if r.overlay.inUpper(c.exe) {
			return notApplicable(fmt.Errorf("%s is in the upper directory", c.exe))
		}
		path = r.overlay.path(c.exe)
	case v1alpha1.CheckExeCopyUp:
		if err := r.overlay.copyUp(c.exe); err != nil {
			return notApplicable(err)
		}
		path = r.overlay.path(c.exe)
	case v1alpha1.CheckExeFromMemfd:
		f, err := newMemfd(c.exe, r.helper)
		if err != nil {
			return notApplicable(err)
		}
		release = func() { f.Close() }
		path = fmt.Sprintf("/proc/self/fd/%d", f.Fd())
		// memfd files are named "memfd:<name>".
		match = "memfd:" + c.exe
	}
	defer release()

	execStart := r.opts.Now()
	if err := exec.CommandContext(ctx, path).Run(); err != nil {
		// The exec itself failed: nothing ran for the sensor to see.
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			return notApplicable(fmt.Errorf("exec %s: %w", path, err))
		}
	}
	ev, err := r.wait(ctx, match, execStart.Add(r.opts.Timeout))
	if err != nil {
		res.Result = v1alpha1.SelfTestFailed
		res.Observed = err.Error()
		res.Message = fmt.Sprintf("%s: %s for %s", c.name, err, match)
		return res
	}
	res.Latency = &metav1.Duration{Duration: ev.Received.Sub(execStart)}
	res.Method = ev.Method.String()
	return judge(c, ev, res)
}

// errTimeout marks a check that saw no event.
var errTimeout = errors.New("no event")

// wait returns the first event for the executable name, keeping events for other names.
func (r *runner) wait(ctx context.Context, name string, deadline time.Time) (sensor.Event, error) {
	if ev, ok := r.seen[name]; ok {
		return ev, nil
	}
	timer := time.NewTimer(deadline.Sub(r.opts.Now()))
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-r.events:
			if !ok {
				return sensor.Event{}, fmt.Errorf("%w: the sensor closed its event stream", errTimeout)
			}
			if ev.Filename == name {
				return ev, nil
			}
			if strings.HasPrefix(ev.Filename, "dp-") || strings.HasPrefix(ev.Filename, "memfd:dp-") {
				r.seen[ev.Filename] = ev
			}
		case <-timer.C:
			return sensor.Event{}, fmt.Errorf("%w within %s", errTimeout, r.opts.Timeout)
		case <-ctx.Done():
			return sensor.Event{}, fmt.Errorf("%w: interrupted (%w)", errTimeout, ctx.Err())
		}
	}
}

// judge compares the event with what the check expects.
func judge(c check, ev sensor.Event, res v1alpha1.CheckResult) v1alpha1.CheckResult {
	res.Observed = describe(ev)
	detail := fmt.Sprintf("flags %s, comm %s, tgid %d", ev.Flags, ev.Comm, ev.TGID)
	if ev.Method != sensor.MethodNone {
		detail += fmt.Sprintf(", method %s (%s)", ev.Method, ev.Agreement)
	}
	fail := func(why string) v1alpha1.CheckResult {
		res.Result, res.Message = v1alpha1.SelfTestFailed, fmt.Sprintf("%s: expected %s, %s; %s", c.name, c.expected, why, detail)
		return res
	}
	if ev.Agreement == sensor.AgreementDisagree {
		return fail("CORE and InodeOffset disagree")
	}
	upper, lower, memfd := ev.UpperLayer(), ev.LowerLayer(), ev.FromMemfd()
	switch c.name {
	case v1alpha1.CheckExeUpperLayer, v1alpha1.CheckExeCopyUp, v1alpha1.CheckExeLowerLayer:
		if !upper && !lower {
			res.Result = v1alpha1.SelfTestNotApplicable
			res.Message = fmt.Sprintf("%s: the sensor reported neither layer (not an overlay path?); %s", c.name, detail)
			return res
		}
		wantUpper := c.name != v1alpha1.CheckExeLowerLayer
		if upper && lower {
			return fail("observed both layers")
		}
		if upper != wantUpper {
			return fail("observed " + res.Observed)
		}
		if memfd {
			return fail("observed from memfd too")
		}
	case v1alpha1.CheckExeFromMemfd:
		if !memfd {
			return fail("observed " + res.Observed)
		}
		if upper || lower {
			return fail("observed a layer too")
		}
	}
	res.Result, res.Message = v1alpha1.SelfTestPassed, detail
	return res
}

// describe names what an event says about the exe.
func describe(ev sensor.Event) string {
	var parts []string
	if ev.UpperLayer() {
		parts = append(parts, "upper layer")
	}
	if ev.LowerLayer() {
		parts = append(parts, "lower layer")
	}
	if ev.FromMemfd() {
		parts = append(parts, "from memfd")
	}
	if len(parts) == 0 {
		return "neither layer"
	}
	return strings.Join(parts, ", ")
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// truncateFront keeps the end of s (where a verifier log says why) within n bytes.
func truncateFront(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n+3:]
}
