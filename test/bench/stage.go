package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// stage holds the executables the benchmark runs: one on an ordinary filesystem and two in a
// private overlay mount, one from its lower and one from its upper layer.
type stage struct {
	dir     string
	plain   string // not on overlayfs: the common case
	lower   string // overlay, lower layer
	upper   string // overlay, upper layer (written through the merged directory)
	plainFS string // the plain executable's filesystem type, for the report
	merged  string
	// cgroup is a container's cgroup made for the execs, named the way the kubelet's systemd
	// driver and containerd name them (the longest names a node has: the sensor reads both into
	// every event); procs is its cgroup.procs, which the exec helper joins.
	cgroup string
	procs  string
}

// The executables' names are unique so the events they cause can be counted.
const (
	plainName = "dpbench-plain"
	lowerName = "dpbench-lower"
	upperName = "dpbench-upper"
)

func newStage(parent string) (*stage, error) {
	dir, err := os.MkdirTemp(parent, "dpbench-")
	if err != nil {
		return nil, err
	}
	s := &stage{dir: dir, merged: filepath.Join(dir, "merged")}
	for _, d := range []string{"plain", "lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			s.close()
			return nil, err
		}
	}
	s.plain = filepath.Join(dir, "plain", plainName)
	if err := writeTinyExe(s.plain); err != nil {
		s.close()
		return nil, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.plain, &st); err != nil {
		s.close()
		return nil, err
	}
	s.plainFS = fsName(st.Type)
	if st.Type == unix.OVERLAYFS_SUPER_MAGIC {
		s.close()
		return nil, fmt.Errorf("%s is on overlayfs; give -workdir a directory on an ordinary filesystem", parent)
	}
	if err := writeTinyExe(filepath.Join(dir, "lower", lowerName)); err != nil {
		s.close()
		return nil, err
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s",
		filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"))
	if err := unix.Mount("overlay", s.merged, "overlay", 0, opts); err != nil {
		s.close()
		return nil, fmt.Errorf("mount overlay: %w", err)
	}
	s.lower = filepath.Join(s.merged, lowerName)
	s.upper = filepath.Join(s.merged, upperName)
	if err := writeTinyExe(s.upper); err != nil {
		s.close()
		return nil, err
	}
	// The memory controller's hierarchy on cgroup v1 (the one the sensor names), else v2's.
	root := "/sys/fs/cgroup/memory"
	if _, err := os.Stat(root); err != nil {
		root = "/sys/fs/cgroup"
	}
	var id [32]byte
	if _, err := rand.Read(id[:]); err != nil {
		s.close()
		return nil, err
	}
	h := hex.EncodeToString(id[:])
	pod := fmt.Sprintf("kubepods-besteffort-pod%s_%s_%s_%s_%s.slice", h[:8], h[8:12], h[12:16], h[16:20], h[20:32])
	s.cgroup = filepath.Join(root, pod, "cri-containerd-"+h+".scope")
	if err := os.MkdirAll(s.cgroup, 0o755); err != nil {
		s.cgroup = ""
		s.close()
		return nil, fmt.Errorf("make a container's cgroup to exec in: %w", err)
	}
	s.procs = filepath.Join(s.cgroup, "cgroup.procs")
	return s, nil
}

// close unmounts the overlay and removes everything the stage created.
func (s *stage) close() error {
	var err error
	if s.cgroup != "" {
		// Empty once the helpers are gone; a cgroup directory is removed with rmdir.
		for _, d := range []string{s.cgroup, filepath.Dir(s.cgroup)} {
			if e := os.Remove(d); e != nil && err == nil {
				err = fmt.Errorf("remove cgroup: %w", e)
			}
		}
	}
	if e := unix.Unmount(s.merged, unix.MNT_DETACH); e != nil && e != unix.EINVAL {
		err = fmt.Errorf("unmount %s: %w", s.merged, e)
	}
	if e := os.RemoveAll(s.dir); e != nil && err == nil {
		err = e
	}
	return err
}

func fsName(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("fs magic 0x%x", magic)
}

// execResult is what a run of execs took.
type execResult struct {
	// elapsed is the wall-clock time of the execs alone.
	elapsed time.Duration
	// childCPU is the children's CPU time (user + system, from wait4's rusage), which counts the
	// exec itself, the sensor's program that runs in the child at sched_process_exec, and the exit.
	childCPU time.Duration
	// selfCPU is the helper's own CPU time in the loop (fork, wait).
	selfCPU time.Duration
	// bestSub is the shortest wall-clock time of a run of subBlock consecutive execs: the least
	// disturbed stretch of the block (other work only ever slows execs down).
	bestSub time.Duration
}

// subBlock is how many consecutive execs make the stretches bestSub is taken over.
const subBlock = 50

// execLoopArg makes the bench binary run execLoop and print its result (execN's helper).
const execLoopArg = "-internal-exec-loop"

// execN runs path n times from a helper process (this binary with execLoopArg), as a node's execs
// come from processes other than the sensor's: the sensor's process then sees none of their
// SIGCHLDs, which would otherwise interrupt its reader and count in its cost. The helper's own
// exec is one more run of the sensor's program, which the cost figures count as another
// process's exec.
// With pin >= 0 the helper and its children run on that CPU only, at nice -20 (see execLoopMain).
// The helper joins the cgroup whose cgroup.procs is procs first.
func execN(path string, n, pin int, procs string) (execResult, error) {
	out, err := exec.Command("/proc/self/exe", execLoopArg, path, strconv.Itoa(n), strconv.Itoa(pin), procs).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
		}
		return execResult{}, fmt.Errorf("exec helper: %w", err)
	}
	var elapsed, cpu, self, best int64
	if _, err := fmt.Sscanf(string(out), "%d %d %d %d", &elapsed, &cpu, &self, &best); err != nil {
		return execResult{}, fmt.Errorf("exec helper said %q: %w", out, err)
	}
	return execResult{elapsed: time.Duration(elapsed), childCPU: time.Duration(cpu), selfCPU: time.Duration(self), bestSub: time.Duration(best)}, nil
}

// execLoopMain is the helper's main: execLoop, then "<elapsed ns> <child CPU ns> <own CPU ns>
// <best sub-block ns>" on stdout. With pin >= 0 it first moves to that CPU and to nice -20, and its children inherit
// both: a fork+exec+wait loop that the scheduler moves between CPUs (exec balancing) or that other
// work on a shared machine preempts varies far more from block to block than a sensor costs.
// Runs with and without a sensor get the same treatment, and the sensor's program runs in the
// children.
func execLoopMain(path, count, pinArg, procs string) int {
	n, err1 := strconv.Atoi(count)
	pin, err2 := strconv.Atoi(pinArg)
	if err := errors.Join(err1, err2); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := os.WriteFile(procs, []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		fmt.Fprintln(os.Stderr, "join the container's cgroup:", err)
		return 1
	}
	if pin >= 0 {
		var set unix.CPUSet
		set.Set(pin)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			fmt.Fprintf(os.Stderr, "pin to CPU %d: %v\n", pin, err)
			return 1
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, -20); err != nil {
			fmt.Fprintln(os.Stderr, "set nice -20:", err)
			return 1
		}
	}
	var ru0, ru1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	r, err := execLoop(path, n)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	self := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	fmt.Printf("%d %d %d %d\n", r.elapsed.Nanoseconds(), r.childCPU.Nanoseconds(), self, r.bestSub.Nanoseconds())
	return 0
}

// execLoop forks and execs path n times, waiting for each child; any failure stops it.
func execLoop(path string, n int) (execResult, error) {
	argv := []string{path}
	attr := &syscall.ProcAttr{Env: []string{}}
	var r execResult
	start := time.Now()
	sub := start
	for i := 0; i < n; i++ {
		if i > 0 && i%subBlock == 0 {
			now := time.Now()
			if d := now.Sub(sub); r.bestSub == 0 || d < r.bestSub {
				r.bestSub = d
			}
			sub = now
		}
		pid, err := syscall.ForkExec(path, argv, attr)
		if err != nil {
			return r, fmt.Errorf("exec %s: %w", path, err)
		}
		var ws syscall.WaitStatus
		var ru syscall.Rusage
		if _, err := syscall.Wait4(pid, &ws, 0, &ru); err != nil {
			return r, fmt.Errorf("wait for %s: %w", path, err)
		}
		if !ws.Exited() || ws.ExitStatus() != 0 {
			return r, fmt.Errorf("%s ended with status %v", path, ws)
		}
		r.childCPU += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	r.elapsed = time.Since(start)
	if n%subBlock == 0 {
		if d := time.Since(sub); r.bestSub == 0 || d < r.bestSub {
			r.bestSub = d
		}
	}
	return r, nil
}
