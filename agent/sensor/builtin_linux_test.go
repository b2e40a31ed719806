package sensor

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/testutil"
)

var drivers = []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF}

// requireKernel skips where the kernel tests cannot run; CI turns a skip into a failure.
func requireKernel(t *testing.T) { testutil.RequireKernel(t) }

func randomName(t *testing.T, prefix string) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b[:])
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// mountOverlay mounts an overlay whose lower layer holds a copy of /bin/true named name and
// returns the merged path of that binary; the mount goes away with the test.
func mountOverlay(t *testing.T, name string) string {
	t.Helper()
	base := t.TempDir()
	dirs := map[string]string{}
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		dirs[d] = filepath.Join(base, d)
		if err := os.Mkdir(dirs[d], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, "/bin/true", filepath.Join(dirs["lower"], name))
	opts := "lowerdir=" + dirs["lower"] + ",upperdir=" + dirs["upper"] + ",workdir=" + dirs["work"]
	if err := unix.Mount("overlay", dirs["merged"], "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dirs["merged"], 0); err != nil {
			unix.Unmount(dirs["merged"], unix.MNT_DETACH)
		}
	})
	return filepath.Join(dirs["merged"], name)
}

func startSensor(t *testing.T, d v1alpha1.Driver) (*Builtin, <-chan Event) {
	t.Helper()
	s := NewBuiltin(Options{})
	if err := s.Start(d); err != nil {
		t.Fatalf("start %s: %v\n%s", d, err, VerifierLogTail(err, 30))
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	events, unsubscribe := s.Subscribe()
	t.Cleanup(unsubscribe)
	return s, events
}

// TestKernelFilter proves the filter runs in the kernel: execs of a plain binary on a
// non-overlay filesystem, of one merely named like a memfd, and of an overlay lower-layer binary
// (nobody asked for lower-layer events) produce no event, while an upper-layer exec after them
// does. With lower-layer events requested the lower exec is sent, and after the release it is
// filtered again.
func TestKernelFilter(t *testing.T) {
	requireKernel(t)
	var st unix.Statfs_t
	if err := unix.Statfs("/bin/true", &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == 0x794c7630 {
		t.Skip("/bin/true is on overlayfs here; the negative case needs a non-overlay root")
	}
	for _, d := range drivers {
		t.Run(string(d), func(t *testing.T) {
			s, events := startSensor(t, d)
			dir := t.TempDir()
			if err := unix.Statfs(dir, &st); err != nil || st.Type == 0x794c7630 {
				t.Fatalf("temp dir %s is overlay or unreadable (%v)", dir, err)
			}
			plain := randomName(t, "dp-plain-")
			fakeMemfd := randomName(t, "memfd:dp-fake-")
			copyFile(t, "/bin/true", filepath.Join(dir, plain))
			copyFile(t, "/bin/true", filepath.Join(dir, fakeMemfd))
			lower := randomName(t, "dp-lower-")
			lowerPath := mountOverlay(t, lower)
			control := randomName(t, "dp-ctl-")
			controlPath := filepath.Join(filepath.Dir(lowerPath), control)
			copyFile(t, "/bin/true", controlPath) // written through the merged dir: upper layer

			run := func(paths ...string) {
				t.Helper()
				for _, p := range paths {
					if out, err := exec.Command(p).CombinedOutput(); err != nil {
						t.Fatalf("exec %s: %v %s", p, err, out)
					}
				}
			}
			run("/bin/true", filepath.Join(dir, plain), filepath.Join(dir, fakeMemfd), lowerPath, controlPath)
			expectOnly(t, events, control, map[string]bool{"true": true, plain: true, fakeMemfd: true, lower: true})

			release, err := s.RequestLowerLayer()
			if err != nil {
				t.Fatal(err)
			}
			run(lowerPath)
			ev := expectOnly(t, events, lower, nil)
			if !ev.LowerLayer() || ev.UpperLayer() || ev.FromMemfd() {
				t.Errorf("requested lower exec: flags %s, want lower layer only", ev.Flags)
			}
			release()
			run(lowerPath, controlPath)
			expectOnly(t, events, control, map[string]bool{lower: true})
		})
	}
}

// expectOnly waits for the event of want, failing on any event named in unwanted; it returns the
// event after a short drain (perf buffers are per CPU: a stray event on the other CPU may come
// later).
func expectOnly(t *testing.T, events <-chan Event, want string, unwanted map[string]bool) Event {
	t.Helper()
	deadline := time.After(5 * time.Second)
	var drain <-chan time.Time
	var got *Event
	for {
		select {
		case ev := <-events:
			if unwanted[ev.Filename] {
				t.Errorf("unwanted event: %+v", ev)
			}
			if ev.Filename == want && got == nil {
				got = &ev
				drain = time.After(300 * time.Millisecond)
			}
		case <-drain:
			return *got
		case <-deadline:
			t.Fatalf("no event for %s: the sensor sees nothing, so a negative result proves nothing", want)
		}
	}
}

func TestStartTwice(t *testing.T) {
	requireKernel(t)
	s, _ := startSensor(t, v1alpha1.DriverModernEBPF)
	if err := s.Start(v1alpha1.DriverModernEBPF); err != nil {
		t.Errorf("second Start with the same driver: %v", err)
	}
	if err := s.Start(v1alpha1.DriverEBPF); err == nil {
		t.Error("Start with another driver on a running sensor succeeded")
	}
	if s.Driver() != v1alpha1.DriverModernEBPF {
		t.Errorf("driver %q", s.Driver())
	}
}

func TestCloseEndsSubscriptions(t *testing.T) {
	requireKernel(t)
	s := NewBuiltin(Options{})
	if err := s.Start(v1alpha1.DriverEBPF); err != nil {
		t.Fatal(err)
	}
	events, unsubscribe := s.Subscribe()
	defer unsubscribe()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-events:
		if ok {
			t.Error("event after Close")
		}
	case <-time.After(time.Second):
		t.Error("subscription not closed by Close")
	}
	if err := s.Start(v1alpha1.DriverEBPF); err == nil {
		t.Error("Start after Close succeeded")
	}
}

func TestKmodNotSupported(t *testing.T) {
	s := NewBuiltin(Options{})
	defer s.Close()
	err := s.Start(v1alpha1.DriverKmod)
	var se *Error
	if !errors.As(err, &se) || se.Reason != ReasonDriverNotSupported || se.Driver != v1alpha1.DriverKmod {
		t.Fatalf("Start(kmod) = %v, want a %s *Error", err, ReasonDriverNotSupported)
	}
	if !errors.Is(err, ErrDriverNotSupported) {
		t.Errorf("error does not wrap ErrDriverNotSupported: %v", err)
	}
}

// TestBatchedEventsArriveWithinTheFlushInterval: the program writes without waking the reader
// (BPF_RB_NO_WAKEUP; perf wakes only every quarter buffer), so a lone upper-layer exec reaches
// user space only because the reader comes back every FlushInterval. Its latency is bounded by
// that interval, and the event is not lost or held until the buffer fills.
func TestBatchedEventsArriveWithinTheFlushInterval(t *testing.T) {
	requireKernel(t)
	const flush = 300 * time.Millisecond
	for _, d := range drivers {
		t.Run(string(d), func(t *testing.T) {
			s := NewBuiltin(Options{FlushInterval: flush})
			if err := s.Start(d); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			events, unsubscribe := s.Subscribe()
			t.Cleanup(unsubscribe)
			lower := randomName(t, "dp-lower-")
			name := randomName(t, "dp-upper-")
			upper := filepath.Join(filepath.Dir(mountOverlay(t, lower)), name)
			copyFile(t, "/bin/true", upper)
			for i := 0; i < 3; i++ {
				start := time.Now()
				if err := exec.Command(upper).Run(); err != nil {
					t.Fatal(err)
				}
				ev := expectOnly(t, events, name, nil)
				if !ev.UpperLayer() {
					t.Errorf("flags %s, want upper layer", ev.Flags)
				}
				if lat := ev.Received.Sub(start); lat > flush+700*time.Millisecond {
					t.Errorf("event %d took %s, want within the flush interval %s (plus scheduling)", i, lat, flush)
				}
			}
			if err := s.Health(); err != nil {
				t.Errorf("idle reader reported unhealthy: %v", err)
			}
		})
	}
}

// TestEventNamesItsCgroup: the kernel reads the exec'ing task's cgroup name (the memory
// controller's on cgroup v1, the unified one on v2) and its parent's into the event, so the
// container of a process that exits at once can still be named. The execs run in cgroups made for
// the test, one CPU for all: the kernel keeps a CPU's last cgroup names to reuse while its execs
// come from that cgroup, so a container, another container, then the first again must each come
// with their own names.
func TestEventNamesItsCgroup(t *testing.T) {
	requireKernel(t)
	root := "/sys/fs/cgroup/memory"
	if _, err := os.Stat(root); err != nil {
		root = "/sys/fs/cgroup" // cgroup v2
	}
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		t.Fatalf("taskset (util-linux) runs the execs on one CPU: %v", err)
	}
	for _, d := range drivers {
		t.Run(string(d), func(t *testing.T) {
			_, events := startSensor(t, d)
			// A pod's cgroup and two containers' in it.
			pod := randomName(t, "dp-pod-")
			groups := []string{randomName(t, "dp-cgroup-"), randomName(t, "dp-cgroup-")}
			for _, g := range groups {
				dir := filepath.Join(root, pod, g)
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatalf("make a cgroup to exec in: %v", err)
				}
				t.Cleanup(func() { _ = os.Remove(dir); _ = os.Remove(filepath.Dir(dir)) })
			}
			dir := filepath.Dir(mountOverlay(t, randomName(t, "dp-lower-")))
			for i, g := range []string{groups[0], groups[1], groups[0], groups[0]} {
				name := fmt.Sprintf("dp-cg%d-%s", i, randomName(t, ""))
				path := filepath.Join(dir, name)
				copyFile(t, "/bin/true", path) // through the merged dir: upper layer, always sent
				script := "echo $$ > " + filepath.Join(root, pod, g, "cgroup.procs") + " && exec " + path
				if out, err := exec.Command(taskset, "-c", "0", "/bin/sh", "-c", script).CombinedOutput(); err != nil {
					t.Fatalf("exec in the cgroup: %v %s", err, out)
				}
				ev := expectOnly(t, events, name, nil)
				if ev.Cgroup.Leaf != g || ev.Cgroup.Parent != pod || ev.Filename != name {
					t.Errorf("exec %d: cgroup %+v, filename %q; want leaf %q, parent %q, filename %q", i, ev.Cgroup, ev.Filename, g, pod, name)
				}
			}
		})
	}
}
