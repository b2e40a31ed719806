package selftest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// failingSensor fails to start the way a rejected program does.
type failingSensor struct{ err error }

func (f failingSensor) Start(v1alpha1.Driver) error { return f.err }
func (f failingSensor) Subscribe() (<-chan sensor.Event, func()) {
	ch := make(chan sensor.Event)
	close(ch)
	return ch, func() {}
}
func (f failingSensor) Close() error { return nil }

func TestStartFailureIsReported(t *testing.T) {
	verr := &ebpf.VerifierError{Cause: unix.EACCES, Log: []string{"0: R1=ctx()", "invalid mem access 'scalar'"}}
	s := failingSensor{err: &sensor.Error{Reason: sensor.ReasonSensorLoadFailed, Driver: v1alpha1.DriverModernEBPF,
		Err: fmt.Errorf("load tp_btf program: %w", verr)}}
	st := Run(context.Background(), s, Options{Driver: v1alpha1.DriverModernEBPF, WorkDir: t.TempDir()})
	if st.Result != v1alpha1.SelfTestFailed || st.Reason != sensor.ReasonSensorLoadFailed {
		t.Fatalf("result %s reason %s, want Failed SensorLoadFailed", st.Result, st.Reason)
	}
	if !strings.Contains(st.Message, "invalid mem access 'scalar'") {
		t.Errorf("message lacks the verifier log: %q", st.Message)
	}
	if len(st.Checks) != 0 {
		t.Errorf("checks ran without a sensor: %+v", st.Checks)
	}
	if st.StartTime == nil || st.FinishTime == nil {
		t.Error("start or finish time missing")
	}

	st = Run(context.Background(), failingSensor{err: &sensor.Error{Reason: sensor.ReasonDriverNotSupported,
		Driver: v1alpha1.DriverKmod, Err: sensor.ErrDriverNotSupported}}, Options{Driver: v1alpha1.DriverKmod})
	if st.Result != v1alpha1.SelfTestFailed || st.Reason != sensor.ReasonDriverNotSupported {
		t.Errorf("kmod: result %s reason %s", st.Result, st.Reason)
	}
}

func TestInvalidChecks(t *testing.T) {
	for _, checks := range [][]v1alpha1.CheckName{
		{"ExeNope"},
		{v1alpha1.CheckExeUpperLayer, v1alpha1.CheckExeUpperLayer},
	} {
		st := Run(context.Background(), failingSensor{}, Options{Driver: v1alpha1.DriverEBPF, Checks: checks})
		if st.Result != v1alpha1.SelfTestFailed || st.Reason != ReasonInvalidInput {
			t.Errorf("checks %v: result %s reason %s", checks, st.Result, st.Reason)
		}
	}
}

func TestUniqueNamesPerRun(t *testing.T) {
	a, err := plan(v1alpha1.AllChecks, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := plan(v1alpha1.AllChecks, "")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, c := range append(a, b...) {
		if names[c.exe] {
			t.Errorf("name %s used twice", c.exe)
		}
		names[c.exe] = true
		// memfd names gain a "memfd:" prefix and must still fit the event's 63-byte filename.
		if len("memfd:"+c.exe) > 63 {
			t.Errorf("name %s too long for the event", c.exe)
		}
	}
}

func TestJudge(t *testing.T) {
	ov := sensor.FlagOverlay
	for _, tc := range []struct {
		check v1alpha1.CheckName
		ev    sensor.Event
		want  v1alpha1.SelfTestResult
	}{
		{v1alpha1.CheckExeUpperLayer, sensor.Event{Flags: ov | sensor.FlagUpperLayer, Method: sensor.MethodCORE, Agreement: sensor.AgreementAgree}, v1alpha1.SelfTestPassed},
		{v1alpha1.CheckExeUpperLayer, sensor.Event{Flags: ov | sensor.FlagLowerLayer, Method: sensor.MethodCORE}, v1alpha1.SelfTestFailed},
		{v1alpha1.CheckExeUpperLayer, sensor.Event{Flags: ov | sensor.FlagUpperLayer, Method: sensor.MethodCORE, Agreement: sensor.AgreementDisagree}, v1alpha1.SelfTestFailed},
		{v1alpha1.CheckExeUpperLayer, sensor.Event{Flags: ov | sensor.FlagUpperLayer | sensor.FlagLowerLayer}, v1alpha1.SelfTestFailed},
		// Neither flag on an overlay check: the path was not overlay; never Passed.
		{v1alpha1.CheckExeUpperLayer, sensor.Event{}, v1alpha1.SelfTestNotApplicable},
		{v1alpha1.CheckExeLowerLayer, sensor.Event{Flags: sensor.FlagWritable}, v1alpha1.SelfTestNotApplicable},
		{v1alpha1.CheckExeLowerLayer, sensor.Event{Flags: ov | sensor.FlagLowerLayer, Method: sensor.MethodInodeOffset}, v1alpha1.SelfTestPassed},
		{v1alpha1.CheckExeLowerLayer, sensor.Event{Flags: ov | sensor.FlagUpperLayer}, v1alpha1.SelfTestFailed},
		{v1alpha1.CheckExeCopyUp, sensor.Event{Flags: ov | sensor.FlagLowerLayer}, v1alpha1.SelfTestFailed},
		{v1alpha1.CheckExeCopyUp, sensor.Event{Flags: ov | sensor.FlagUpperLayer | sensor.FlagWritable}, v1alpha1.SelfTestPassed},
		{v1alpha1.CheckExeFromMemfd, sensor.Event{Flags: sensor.FlagFromMemfd}, v1alpha1.SelfTestPassed},
		{v1alpha1.CheckExeFromMemfd, sensor.Event{Flags: sensor.FlagFromMemfd | ov | sensor.FlagUpperLayer}, v1alpha1.SelfTestFailed},
		{v1alpha1.CheckExeFromMemfd, sensor.Event{}, v1alpha1.SelfTestFailed},
	} {
		got := judge(check{name: tc.check, expected: "x"}, tc.ev, v1alpha1.CheckResult{Name: tc.check})
		if got.Result != tc.want {
			t.Errorf("%s with flags %s (%s): %s, want %s (%s)", tc.check, tc.ev.Flags, tc.ev.Agreement, got.Result, tc.want, got.Message)
		}
	}
}

func TestVerdict(t *testing.T) {
	passed := v1alpha1.CheckResult{Name: v1alpha1.CheckExeLowerLayer, Result: v1alpha1.SelfTestPassed}
	na := v1alpha1.CheckResult{Name: v1alpha1.CheckExeFromMemfd, Result: v1alpha1.SelfTestNotApplicable, Message: "no memfd"}
	timedOut := v1alpha1.CheckResult{Name: v1alpha1.CheckExeUpperLayer, Result: v1alpha1.SelfTestFailed, Observed: "no event within 1s", Message: "ExeUpperLayer: no event within 1s"}
	wrong := v1alpha1.CheckResult{Name: v1alpha1.CheckExeCopyUp, Result: v1alpha1.SelfTestFailed, Observed: "lower layer"}
	for _, tc := range []struct {
		checks     []v1alpha1.CheckResult
		result     v1alpha1.SelfTestResult
		reason     string
		msgContain string
	}{
		{[]v1alpha1.CheckResult{passed}, v1alpha1.SelfTestPassed, ReasonAllChecksPassed, "all 1"},
		{[]v1alpha1.CheckResult{passed, na}, v1alpha1.SelfTestNotApplicable, ReasonNotApplicable, "ExeFromMemfd: no memfd"},
		{[]v1alpha1.CheckResult{passed, na, wrong}, v1alpha1.SelfTestFailed, ReasonCheckFailed, "ExeCopyUp: lower layer"},
		{[]v1alpha1.CheckResult{timedOut, wrong}, v1alpha1.SelfTestFailed, ReasonCheckTimedOut, "ExeUpperLayer: no event within 1s"},
		{nil, v1alpha1.SelfTestNotApplicable, ReasonNotApplicable, "no checks"},
	} {
		result, reason, msg := verdict(tc.checks)
		if result != tc.result || reason != tc.reason || !strings.Contains(msg, tc.msgContain) {
			t.Errorf("verdict(%v) = %s %s %q, want %s %s containing %q", tc.checks, result, reason, msg, tc.result, tc.reason, tc.msgContain)
		}
	}
}

func TestHelperBinaryIsELF(t *testing.T) {
	b, err := helperBinary()
	if err != nil {
		t.Skipf("no helper for this architecture: %v", err)
	}
	if len(b) > 200 || string(b[1:4]) != "ELF" {
		t.Errorf("helper is %d bytes starting %q", len(b), b[:4])
	}
}

// droppingSensor sees only what it is given and reports drops on every reading.
type droppingSensor struct {
	events []sensor.Event
	drops  uint64
	step   uint64
	// lateBy delays the drop reports past the subscription, as Falco's drop alerts come late.
	lateBy     time.Duration
	subscribed time.Time
}

func (d *droppingSensor) Start(v1alpha1.Driver) error { return nil }
func (d *droppingSensor) Subscribe() (<-chan sensor.Event, func()) {
	d.subscribed = time.Now()
	ch := make(chan sensor.Event, len(d.events))
	for _, ev := range d.events {
		ch <- ev
	}
	return ch, func() {}
}
func (d *droppingSensor) Close() error { return nil }
func (d *droppingSensor) Drops() sensor.Drops {
	if d.lateBy > 0 && time.Since(d.subscribed) < d.lateBy {
		return sensor.Drops{User: d.drops}
	}
	d.drops += d.step
	return sensor.Drops{User: d.drops}
}

// TestVerdictUnderDrops: a check without its event is Inconclusive when the sensor lost events
// during the run and Failed when it did not; an event with the wrong flags fails either way.
func TestVerdictUnderDrops(t *testing.T) {
	checks := []v1alpha1.CheckName{v1alpha1.CheckExeFromMemfd}
	wrong := sensor.Event{Filename: "memfd:dp-drops-memfd", Flags: sensor.FlagLowerLayer | sensor.FlagOverlay}
	for _, tc := range []struct {
		name   string
		s      *droppingSensor
		result v1alpha1.SelfTestResult
		reason string
	}{
		{"no event, drops", &droppingSensor{step: 5}, v1alpha1.SelfTestInconclusive, ReasonEventsDropped},
		{"no event, no drops", &droppingSensor{}, v1alpha1.SelfTestFailed, ReasonCheckTimedOut},
		{"wrong event, drops", &droppingSensor{step: 5, events: []sensor.Event{wrong}}, v1alpha1.SelfTestFailed, ReasonCheckFailed},
		// The drops show up after the check timed out (200ms) but within the grace (1.5s).
		{"no event, drops reported late", &droppingSensor{step: 5, lateBy: 800 * time.Millisecond}, v1alpha1.SelfTestInconclusive, ReasonEventsDropped},
	} {
		st := Run(context.Background(), tc.s, Options{Driver: v1alpha1.DriverEBPF, Checks: checks, Timeout: 200 * time.Millisecond,
			WorkDir: t.TempDir(), RunID: "drops"})
		if st.Result != tc.result || st.Reason != tc.reason {
			t.Errorf("%s: %s %s, want %s %s: %s", tc.name, st.Result, st.Reason, tc.result, tc.reason, st.Message)
		}
		if tc.s.step > 0 && !strings.Contains(st.Message, "5 in user space") {
			t.Errorf("%s: message does not count the drops: %s", tc.name, st.Message)
		}
	}
}
