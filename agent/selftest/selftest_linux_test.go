package selftest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/testutil"
)

var drivers = []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF}

// requireKernel skips where the kernel tests cannot run; CI turns a skip into a failure.
func requireKernel(t *testing.T) { testutil.RequireKernel(t) }

// expectedMethod is CORE where struct ovl_inode is in vmlinux or overlay's module BTF, else
// InodeOffset.
func expectedMethod(t *testing.T) string {
	t.Helper()
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("load kernel BTF: %v", err)
	}
	var s *btf.Struct
	if kernel.TypeByName("ovl_inode", &s) == nil {
		return "CORE"
	}
	if mod, err := btf.LoadKernelModuleSpec("overlay"); err == nil && mod.TypeByName("ovl_inode", &s) == nil {
		return "CORE"
	}
	return "InodeOffset"
}

// wrapSensor passes the real sensor's events through mutate, which may change or drop them. It
// embeds the built-in sensor so the optional interfaces (lower-layer requests, drop counts)
// reach the self-test; the events mutate drops are not counted, as a broken sensor would not.
type wrapSensor struct {
	*sensor.Builtin
	mutate func(sensor.Event) (sensor.Event, bool)
}

func (w *wrapSensor) Subscribe() (<-chan sensor.Event, func()) {
	in, unsubscribe := w.Builtin.Subscribe()
	out := make(chan sensor.Event, 1024)
	go func() {
		defer close(out)
		for ev := range in {
			if ev, keep := w.mutate(ev); keep {
				out <- ev
			}
		}
	}()
	return out, unsubscribe
}

func randomHex(t *testing.T) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

func newBuiltin(t *testing.T) *sensor.Builtin {
	t.Helper()
	return newBuiltinWith(t, sensor.Options{})
}

func newBuiltinWith(t *testing.T, opts sensor.Options) *sensor.Builtin {
	t.Helper()
	s := sensor.NewBuiltin(opts)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close sensor: %v", err)
		}
	})
	return s
}

// assertCleanedUp fails when the work directory holds anything or anything is mounted under it.
func assertCleanedUp(t *testing.T, workdir string) {
	t.Helper()
	entries, err := os.ReadDir(workdir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind in %s: %s", workdir, e.Name())
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), workdir+"/") {
		t.Errorf("a mount under %s is left", workdir)
	}
}

func TestAllChecksPassBothDrivers(t *testing.T) {
	requireKernel(t)
	method := expectedMethod(t)
	for _, d := range drivers {
		t.Run(string(d), func(t *testing.T) {
			var mu sync.Mutex
			seen := map[string]sensor.Event{}
			s := &wrapSensor{Builtin: newBuiltin(t), mutate: func(ev sensor.Event) (sensor.Event, bool) {
				mu.Lock()
				seen[ev.Filename] = ev
				mu.Unlock()
				return ev, true
			}}
			workdir := t.TempDir()
			runID := randomHex(t)
			start := time.Now()
			st := Run(context.Background(), s, Options{Driver: d, Attempt: 3, WorkDir: workdir, Timeout: 5 * time.Second, RunID: runID})
			wall := time.Since(start)

			if st.Result != v1alpha1.SelfTestPassed || st.Reason != ReasonAllChecksPassed {
				t.Fatalf("result %s reason %s: %s\n%+v", st.Result, st.Reason, st.Message, st.Checks)
			}
			if st.Driver != d || st.Attempt != 3 || st.BootID == "" || st.StartTime == nil || st.FinishTime == nil {
				t.Errorf("status header incomplete: driver %s attempt %d boot %q", st.Driver, st.Attempt, st.BootID)
			}
			if len(st.Checks) != len(v1alpha1.AllChecks) {
				t.Fatalf("%d checks, want %d", len(st.Checks), len(v1alpha1.AllChecks))
			}
			for i, c := range st.Checks {
				if c.Name != v1alpha1.AllChecks[i] {
					t.Errorf("check %d is %s, want %s", i, c.Name, v1alpha1.AllChecks[i])
				}
				if c.Latency == nil || c.Latency.Duration <= 0 {
					t.Errorf("%s: no latency", c.Name)
					continue
				}
				want := method
				if c.Name == v1alpha1.CheckExeFromMemfd {
					want = ""
				}
				if c.Method != want {
					t.Errorf("%s: method %q, want %q", c.Name, c.Method, want)
				}
				t.Logf("%s: %s, latency %s, method %q", c.Name, c.Observed, c.Latency.Duration, c.Method)
			}
			// Where CO-RE runs, the inode-offset method runs too and must agree on every exec.
			mu.Lock()
			for _, suffix := range []string{"upper", "lower", "copyup"} {
				name := "dp-" + runID + "-" + suffix
				ev, ok := seen[name]
				if !ok || !ev.Flags.Has(sensor.FlagOverlay) {
					t.Errorf("no overlay event for %s (%+v)", name, ev)
					continue
				}
				if method == "CORE" && ev.Agreement != sensor.AgreementAgree {
					t.Errorf("%s: CORE and InodeOffset: %s", name, ev.Agreement)
				}
			}
			mu.Unlock()
			t.Logf("verdict in %s (%s)", wall, st.Message)
			// The design target is 500 ms; this bound only catches a pathological regression
			// on a shared, busy machine.
			if wall > 3*time.Second {
				t.Errorf("self-test took %s", wall)
			}
			assertCleanedUp(t, workdir)
		})
	}
}

// TestInodeOffsetMethodAlone runs the checks with the CO-RE method switched off in the kernel
// program, as on a kernel whose BTF lacks overlay's types: the InodeOffset method must decide
// every overlay check correctly on its own.
func TestInodeOffsetMethodAlone(t *testing.T) {
	requireKernel(t)
	for _, d := range drivers {
		t.Run(string(d), func(t *testing.T) {
			s := sensor.NewBuiltin(sensor.Options{ForceInodeOffset: true})
			defer s.Close()
			st := Run(context.Background(), s, Options{Driver: d, WorkDir: t.TempDir()})
			if st.Result != v1alpha1.SelfTestPassed {
				t.Fatalf("%s %s: %s", st.Result, st.Reason, st.Message)
			}
			for _, c := range st.Checks {
				want := "InodeOffset"
				if c.Name == v1alpha1.CheckExeFromMemfd {
					want = ""
				}
				if c.Method != want {
					t.Errorf("%s: method %q, want %q", c.Name, c.Method, want)
				}
				if strings.Contains(c.Message, "Agree") {
					t.Errorf("%s: a single method cannot agree: %s", c.Name, c.Message)
				}
			}
		})
	}
}

// TestFailsWhenUpperLayerIsNeverReported is falco#3286 replayed: a sensor that reports every
// overlay exec as lower must fail the upper-layer and copy-up checks.
func TestFailsWhenUpperLayerIsNeverReported(t *testing.T) {
	requireKernel(t)
	s := &wrapSensor{Builtin: newBuiltin(t), mutate: func(ev sensor.Event) (sensor.Event, bool) {
		if ev.UpperLayer() {
			ev.Flags = ev.Flags&^sensor.FlagUpperLayer | sensor.FlagLowerLayer
		}
		return ev, true
	}}
	workdir := t.TempDir()
	st := Run(context.Background(), s, Options{Driver: v1alpha1.DriverModernEBPF, WorkDir: workdir, Timeout: 2 * time.Second})
	if st.Result != v1alpha1.SelfTestFailed || st.Reason != ReasonCheckFailed {
		t.Fatalf("result %s reason %s, want Failed CheckFailed: %s", st.Result, st.Reason, st.Message)
	}
	want := map[v1alpha1.CheckName]v1alpha1.SelfTestResult{
		v1alpha1.CheckExeUpperLayer: v1alpha1.SelfTestFailed,
		v1alpha1.CheckExeCopyUp:     v1alpha1.SelfTestFailed,
		v1alpha1.CheckExeLowerLayer: v1alpha1.SelfTestPassed,
		v1alpha1.CheckExeFromMemfd:  v1alpha1.SelfTestPassed,
	}
	for _, c := range st.Checks {
		if c.Result != want[c.Name] {
			t.Errorf("%s: %s, want %s (%s)", c.Name, c.Result, want[c.Name], c.Message)
		}
		if c.Result == v1alpha1.SelfTestFailed && c.Observed != "lower layer" {
			t.Errorf("%s: observed %q, want lower layer", c.Name, c.Observed)
		}
	}
	for _, name := range []string{"ExeUpperLayer", "ExeCopyUp"} {
		if !strings.Contains(st.Message, name) {
			t.Errorf("message does not name %s: %s", name, st.Message)
		}
	}
	assertCleanedUp(t, workdir)
}

// TestFailsClosedOnMissingEvents: a sensor that drops upper-layer events fails by timeout.
func TestFailsClosedOnMissingEvents(t *testing.T) {
	requireKernel(t)
	s := &wrapSensor{Builtin: newBuiltin(t), mutate: func(ev sensor.Event) (sensor.Event, bool) {
		return ev, !ev.UpperLayer()
	}}
	workdir := t.TempDir()
	timeout := 300 * time.Millisecond
	st := Run(context.Background(), s, Options{Driver: v1alpha1.DriverEBPF, WorkDir: workdir, Timeout: timeout,
		Checks: []v1alpha1.CheckName{v1alpha1.CheckExeLowerLayer, v1alpha1.CheckExeUpperLayer, v1alpha1.CheckExeCopyUp}})
	if st.Result != v1alpha1.SelfTestFailed || st.Reason != ReasonCheckTimedOut {
		t.Fatalf("result %s reason %s, want Failed CheckTimedOut: %s", st.Result, st.Reason, st.Message)
	}
	for _, c := range st.Checks {
		switch c.Name {
		case v1alpha1.CheckExeLowerLayer:
			if c.Result != v1alpha1.SelfTestPassed {
				t.Errorf("lower: %s (%s)", c.Result, c.Message)
			}
		default:
			if c.Result != v1alpha1.SelfTestFailed || c.Observed != "no event within 300ms" || c.Latency != nil {
				t.Errorf("%s: %s observed %q latency %v", c.Name, c.Result, c.Observed, c.Latency)
			}
			if !strings.Contains(st.Message, string(c.Name)+": no event within 300ms") {
				t.Errorf("message does not name %s with its timeout: %s", c.Name, st.Message)
			}
		}
	}
	assertCleanedUp(t, workdir)
}

// TestInterruptedRunCleansUp cancels the run at its first event: the verdict is Failed and
// the mounts and files are gone.
func TestInterruptedRunCleansUp(t *testing.T) {
	requireKernel(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var once sync.Once
	s := &wrapSensor{Builtin: newBuiltin(t), mutate: func(ev sensor.Event) (sensor.Event, bool) {
		if strings.HasPrefix(ev.Filename, "dp-") {
			once.Do(cancel)
			return ev, false
		}
		return ev, true
	}}
	workdir := t.TempDir()
	st := Run(ctx, s, Options{Driver: v1alpha1.DriverModernEBPF, WorkDir: workdir, Timeout: 5 * time.Second})
	if st.Result != v1alpha1.SelfTestFailed || st.Reason != ReasonInterrupted {
		t.Fatalf("result %s reason %s, want Failed Interrupted: %s", st.Result, st.Reason, st.Message)
	}
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Fatal("the run was not cancelled")
	}
	assertCleanedUp(t, workdir)
}

// TestStagingOnTmpfs is the initramfs case: the layers on tmpfs.
func TestStagingOnTmpfs(t *testing.T) {
	requireKernel(t)
	workdir := "/dev/shm"
	if m, err := statfsMagic(workdir); err != nil || m != tmpfsMagic {
		t.Skipf("%s is not tmpfs here (%v)", workdir, err)
	}
	st := Run(context.Background(), newBuiltin(t), Options{Driver: v1alpha1.DriverModernEBPF, WorkDir: workdir,
		Checks: []v1alpha1.CheckName{v1alpha1.CheckExeUpperLayer, v1alpha1.CheckExeCopyUp}})
	if st.Result != v1alpha1.SelfTestPassed {
		t.Fatalf("on tmpfs: %s %s: %s", st.Result, st.Reason, st.Message)
	}
	if !strings.Contains(st.Message, "on tmpfs") {
		t.Errorf("message does not say the layers were on tmpfs: %s", st.Message)
	}
}

// TestStagingOnRamfs is an initramfs whose root is ramfs: the layers go on a private tmpfs.
func TestStagingOnRamfs(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	if err := unix.Mount("ramfs", dir, "ramfs", 0, ""); err != nil {
		t.Fatalf("mount ramfs: %v", err)
	}
	defer func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount ramfs: %v", err)
		}
	}()
	st := Run(context.Background(), newBuiltin(t), Options{Driver: v1alpha1.DriverEBPF, WorkDir: dir,
		Checks: []v1alpha1.CheckName{v1alpha1.CheckExeLowerLayer, v1alpha1.CheckExeCopyUp}})
	if st.Result != v1alpha1.SelfTestPassed {
		t.Fatalf("on ramfs: %s %s: %s", st.Result, st.Reason, st.Message)
	}
	if !strings.Contains(st.Message, "tmpfs (mounted over ramfs)") {
		t.Errorf("message does not say a tmpfs was mounted over ramfs: %s", st.Message)
	}
	assertCleanedUp(t, dir)
}

// TestUnstageableIsNotApplicable: when no overlay can be built the overlay checks are
// NotApplicable, the memfd check still runs, and the verdict is not Passed.
func TestUnstageableIsNotApplicable(t *testing.T) {
	requireKernel(t)
	st := Run(context.Background(), newBuiltin(t), Options{Driver: v1alpha1.DriverModernEBPF, WorkDir: "/proc/driverpilot-cannot-exist"})
	if st.Result != v1alpha1.SelfTestNotApplicable || st.Reason != ReasonNotApplicable {
		t.Fatalf("result %s reason %s, want NotApplicable: %s", st.Result, st.Reason, st.Message)
	}
	for _, c := range st.Checks {
		want := v1alpha1.SelfTestNotApplicable
		if c.Name == v1alpha1.CheckExeFromMemfd {
			want = v1alpha1.SelfTestPassed
		}
		if c.Result != want {
			t.Errorf("%s: %s, want %s (%s)", c.Name, c.Result, want, c.Message)
		}
		if want == v1alpha1.SelfTestNotApplicable && !strings.Contains(c.Message, "could not stage") {
			t.Errorf("%s: message %q does not say why", c.Name, c.Message)
		}
	}
}

// blockedWriter is an alert output nobody reads (a full stdout pipe): Write blocks until release.
type blockedWriter struct {
	release chan struct{}
	once    sync.Once
}

func (w *blockedWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

func (w *blockedWriter) unblock() { w.once.Do(func() { close(w.release) }) }

// floodUpper mounts a private overlay under dir, drops the helper into its upper layer and
// executes it n times: n upper-layer events, which the built-in sensor always sends.
func floodUpper(t *testing.T, dir string, n int) {
	t.Helper()
	helper, err := helperBinary()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(dir+"/"+d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	merged := dir + "/merged"
	opts := "lowerdir=" + dir + "/lower,upperdir=" + dir + "/upper,workdir=" + dir + "/work"
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(merged, unix.MNT_DETACH) })
	exe := merged + "/dp-flood"
	if err := os.WriteFile(exe, helper, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if err := exec.Command(exe).Run(); err != nil {
			t.Fatalf("exec %s: %v", exe, err)
		}
	}
}

// TestDropsMakeTheRunInconclusive is a busy node: a tiny kernel buffer, an alert output that
// blocks the reader (a full stdout pipe) and a burst of upper-layer execs fill the buffer, so the
// self-test's own events are lost. The run must be Inconclusive with the drops counted, never
// Failed (which would blacklist a working driver), and the blocked output must not block the
// self-test's subscription (the alert was once written holding the lock Subscribe needs).
func TestDropsMakeTheRunInconclusive(t *testing.T) {
	requireKernel(t)
	for _, d := range drivers {
		t.Run(string(d), func(t *testing.T) {
			w := &blockedWriter{release: make(chan struct{})}
			s := newBuiltinWith(t, sensor.Options{Alerts: w, RingBufferBytes: 4096, PerfBufferBytes: 4096, StallAfter: time.Second})
			t.Cleanup(w.unblock) // runs before the sensor's Close
			if err := s.Start(d); err != nil {
				t.Fatal(err)
			}
			floodUpper(t, t.TempDir(), 300)
			deadline := time.Now().Add(5 * time.Second)
			for s.Drops().Kernel == 0 && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if s.Drops().Kernel == 0 {
				t.Fatalf("no kernel drops counted after the flood (drops %+v)", s.Drops())
			}

			workdir := t.TempDir()
			done := make(chan v1alpha1.SelfTestStatus, 1)
			go func() {
				done <- Run(context.Background(), s, Options{Driver: d, WorkDir: workdir, Timeout: time.Second})
			}()
			var st v1alpha1.SelfTestStatus
			select {
			case st = <-done:
			case <-time.After(30 * time.Second):
				w.unblock()
				t.Fatal("the self-test is blocked: a blocked alert output holds the lock Subscribe needs")
			}
			if st.Result != v1alpha1.SelfTestInconclusive || st.Reason != ReasonEventsDropped {
				t.Fatalf("result %s reason %s, want Inconclusive EventsDropped: %s", st.Result, st.Reason, st.Message)
			}
			for _, c := range st.Checks {
				if c.Result == v1alpha1.SelfTestFailed {
					t.Errorf("%s Failed in a run with drops: %s", c.Name, c.Message)
				}
			}
			if !strings.Contains(st.Message, "in the kernel (buffer full)") {
				t.Errorf("message does not report the kernel drops: %s", st.Message)
			}
			if err := s.Health(); err == nil {
				t.Error("Health is nil while the reader is stuck on a blocked alert output")
			}
			assertCleanedUp(t, workdir)
		})
	}
}
