package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

const statsSysctl = "/proc/sys/kernel/bpf_stats_enabled"

// statsOn makes the kernel account BPF run time. It prefers BPF_ENABLE_STATS (Linux 5.8+): the
// accounting is tied to a file descriptor, so it ends with this process even if it crashes and it
// never fights another user of the sysctl. Where that fails it sets kernel.bpf_stats_enabled=1 and
// the returned function puts the previous value back. how says which way was used.
// With useSysctl it goes straight to the sysctl.
func statsOn(useSysctl bool) (restore func() error, how string, err error) {
	if !useSysctl {
		if c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err == nil {
			return c.Close, "BPF_ENABLE_STATS (kernel.bpf_stats_enabled not touched)", nil
		}
	}
	prev, err := os.ReadFile(statsSysctl)
	if err != nil {
		return nil, "", fmt.Errorf("read %s: %w", statsSysctl, err)
	}
	if err := os.WriteFile(statsSysctl, []byte("1\n"), 0); err != nil {
		return nil, "", fmt.Errorf("enable bpf stats: %w", err)
	}
	return func() error {
		return os.WriteFile(statsSysctl, prev, 0)
	}, fmt.Sprintf("kernel.bpf_stats_enabled=1 (restored to %s afterwards)", strings.TrimSpace(string(prev))), nil
}

// ownPrograms returns the loaded BPF programs that this process holds a file descriptor for and
// whose name is one of names (every one of them without names). Other processes on the machine may run the same sensor; matching on
// our own descriptors keeps their programs out of the figures.
func ownPrograms(names ...string) ([]*ebpf.Program, error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	seen := map[ebpf.ProgramID]bool{}
	var out []*ebpf.Program
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || target != "anon_inode:bpf-prog" {
			continue
		}
		f, err := os.Open(filepath.Join("/proc/self/fdinfo", e.Name()))
		if err != nil {
			continue
		}
		id, err := progIDFromFdinfo(f)
		f.Close()
		if err != nil || seen[ebpf.ProgramID(id)] {
			continue
		}
		seen[ebpf.ProgramID(id)] = true
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
		if err != nil {
			continue
		}
		info, err := p.Info()
		if err != nil || len(names) > 0 && !contains(names, info.Name) {
			p.Close()
			continue
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		if len(names) == 0 {
			return nil, errors.New("no BPF program held by this process")
		}
		return nil, fmt.Errorf("no BPF program named %s held by this process", strings.Join(names, " or "))
	}
	return out, nil
}

// progIDFromFdinfo reads the prog_id line of a BPF program's /proc/<pid>/fdinfo/<fd>.
func progIDFromFdinfo(r io.Reader) (uint32, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "prog_id:"); ok {
			id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			return uint32(id), err
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no prog_id in fdinfo")
}

// progStats is a snapshot of one program's run-time statistics.
type progStats struct {
	runtime time.Duration
	runs    uint64
}

// snapshot sums the run time of progs, every program this process loaded (all of them the
// sensor's, and every one that runs for an exec counts in its cost), and takes the run count of
// counted, the program that runs once per exec.
func snapshot(progs []*ebpf.Program, counted *ebpf.Program) (progStats, error) {
	var sum progStats
	for _, p := range progs {
		s, err := p.Stats()
		if err != nil {
			return progStats{}, fmt.Errorf("program stats: %w", err)
		}
		sum.runtime += s.Runtime
		if p == counted {
			sum.runs = s.RunCount
		}
	}
	return sum, nil
}

func (s progStats) sub(o progStats) progStats {
	return progStats{s.runtime - o.runtime, s.runs - o.runs}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}
