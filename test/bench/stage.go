package main

import (
	"fmt"
	"os"
	"path/filepath"
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
	return s, nil
}

// close unmounts the overlay and removes everything the stage created.
func (s *stage) close() error {
	var err error
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

// execN forks and execs path n times, waiting for each child; any failure stops it. It returns the
// children's CPU time (user + system, from wait4's rusage), which counts the exec itself, the
// sensor's program that runs in the child at sched_process_exec, and the exit.
func execN(path string, n int) (time.Duration, error) {
	argv := []string{path}
	attr := &syscall.ProcAttr{Env: []string{}}
	var cpu time.Duration
	for i := 0; i < n; i++ {
		pid, err := syscall.ForkExec(path, argv, attr)
		if err != nil {
			return cpu, fmt.Errorf("exec %s: %w", path, err)
		}
		var ws syscall.WaitStatus
		var ru syscall.Rusage
		if _, err := syscall.Wait4(pid, &ws, 0, &ru); err != nil {
			return cpu, fmt.Errorf("wait for %s: %w", path, err)
		}
		if !ws.Exited() || ws.ExitStatus() != 0 {
			return cpu, fmt.Errorf("%s ended with status %v", path, ws)
		}
		cpu += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return cpu, nil
}
