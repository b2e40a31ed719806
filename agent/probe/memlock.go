package probe

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// memlockOps are the system calls the memlock probe makes; tests replace them.
type memlockOps struct {
	getrlimit func() (unix.Rlimit, error)
	setrlimit func(unix.Rlimit) error
	// createMap creates and closes a one-entry BPF array map.
	createMap func() error
}

var liveMemlockOps = memlockOps{
	getrlimit: func() (unix.Rlimit, error) {
		var l unix.Rlimit
		err := unix.Prlimit(0, unix.RLIMIT_MEMLOCK, nil, &l)
		return l, err
	},
	setrlimit: func(l unix.Rlimit) error { return unix.Prlimit(0, unix.RLIMIT_MEMLOCK, &l, nil) },
	createMap: func() error {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "dp_probe_mlock", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			return err
		}
		return m.Close()
	},
}

// probeMemlock finds out whether the kernel charges BPF memory to RLIMIT_MEMLOCK (kernels before
// 5.11) or to the memory cgroup, the way cilium/ebpf's rlimit package does (a map created under a
// zero soft limit), and where it does, raises the limit to unlimited. Unlike rlimit.RemoveMemlock
// it first checks that a map can be created at all, so an EPERM for a missing capability is not
// taken for the limit. Without CAP_SYS_RESOURCE the raise fails: the fact is then Limited, with
// the limit, and the soft limit is raised to the hard one, which needs no capability. It changes
// the process's limit for a moment, so it must run before anything else creates BPF objects.
func probeMemlock(ops memlockOps) v1alpha1.StringFact {
	unknown := func(err error) v1alpha1.StringFact { return v1alpha1.StringFact{Error: err.Error()} }
	old, err := ops.getrlimit()
	if err != nil {
		return unknown(fmt.Errorf("read RLIMIT_MEMLOCK: %w", err))
	}
	if err := ops.createMap(); err != nil {
		return unknown(fmt.Errorf("create a BPF map under RLIMIT_MEMLOCK %s: %w", rlimitString(old), err))
	}
	zeroErr := ops.setrlimit(unix.Rlimit{Cur: 0, Max: old.Max})
	if zeroErr != nil {
		return unknown(fmt.Errorf("lower RLIMIT_MEMLOCK to 0: %w", zeroErr))
	}
	mapErr := ops.createMap()
	if err := ops.setrlimit(old); err != nil {
		return unknown(fmt.Errorf("restore RLIMIT_MEMLOCK %s: %w", rlimitString(old), err))
	}
	switch {
	case mapErr == nil:
		return v1alpha1.StringFact{Value: v1alpha1.MemlockMemcgAccounting,
			Source: "created a BPF map under RLIMIT_MEMLOCK 0: the kernel charges BPF memory to the memory cgroup (Linux 5.11+)"}
	case !errors.Is(mapErr, unix.EPERM):
		return unknown(fmt.Errorf("create a BPF map under RLIMIT_MEMLOCK 0: %w", mapErr))
	}
	const charged = "the kernel charges BPF memory to RLIMIT_MEMLOCK (no memory cgroup accounting: Linux before 5.11)"
	if old.Cur == unix.RLIM_INFINITY {
		return v1alpha1.StringFact{Value: v1alpha1.MemlockUnlimited, Source: charged + "; it is unlimited"}
	}
	raiseErr := ops.setrlimit(unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY})
	if raiseErr == nil {
		return v1alpha1.StringFact{Value: v1alpha1.MemlockUnlimited, Source: fmt.Sprintf("%s; raised from %s to unlimited", charged, rlimitString(old))}
	}
	now := old
	if old.Cur < old.Max && ops.setrlimit(unix.Rlimit{Cur: old.Max, Max: old.Max}) == nil {
		now.Cur = old.Max
	}
	why := raiseErr.Error()
	if errors.Is(raiseErr, unix.EPERM) {
		why += " (the agent does not have CAP_SYS_RESOURCE)"
	}
	return v1alpha1.StringFact{Value: v1alpha1.MemlockLimited,
		Source: fmt.Sprintf("%s; raising it from %s to unlimited failed: %s; the limit is %s", charged, rlimitString(old), why, rlimitString(now))}
}

// rlimitString prints a limit's soft and hard values.
func rlimitString(l unix.Rlimit) string {
	b := func(v uint64) string {
		if v == unix.RLIM_INFINITY {
			return "unlimited"
		}
		return strconv.FormatUint(v, 10) + " bytes"
	}
	return fmt.Sprintf("(soft %s, hard %s)", b(l.Cur), b(l.Max))
}
