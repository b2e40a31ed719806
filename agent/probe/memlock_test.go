package probe

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// fakeKernel plays RLIMIT_MEMLOCK and BPF map creation: a map costs one page, charged to the
// soft limit when memlockCharged (kernels before 5.11); raising the hard limit needs
// CAP_SYS_RESOURCE (sysResource).
type fakeKernel struct {
	limit                       unix.Rlimit
	memlockCharged, sysResource bool
	mapErr                      error // every map creation fails with it
}

func (k *fakeKernel) ops() memlockOps {
	return memlockOps{
		getrlimit: func() (unix.Rlimit, error) { return k.limit, nil },
		setrlimit: func(l unix.Rlimit) error {
			if l.Cur > l.Max || (l.Max > k.limit.Max && !k.sysResource) {
				return unix.EPERM
			}
			k.limit = l
			return nil
		},
		createMap: func() error {
			if k.mapErr != nil {
				return k.mapErr
			}
			if k.memlockCharged && k.limit.Cur < 4096 {
				return unix.EPERM
			}
			return nil
		},
	}
}

func TestProbeMemlock(t *testing.T) {
	const inf = unix.RLIM_INFINITY
	for _, tc := range []struct {
		name      string
		kernel    fakeKernel
		want      string // value; "" is unknown
		mention   string // in source or error
		wantLimit unix.Rlimit
	}{
		{"memcg accounting (5.11+): limit untouched",
			fakeKernel{limit: unix.Rlimit{Cur: 65536, Max: 65536}},
			v1alpha1.MemlockMemcgAccounting, "memory cgroup", unix.Rlimit{Cur: 65536, Max: 65536}},
		{"charged, already unlimited",
			fakeKernel{limit: unix.Rlimit{Cur: inf, Max: inf}, memlockCharged: true},
			v1alpha1.MemlockUnlimited, "it is unlimited", unix.Rlimit{Cur: inf, Max: inf}},
		{"charged, raised with CAP_SYS_RESOURCE",
			fakeKernel{limit: unix.Rlimit{Cur: 65536, Max: 65536}, memlockCharged: true, sysResource: true},
			v1alpha1.MemlockUnlimited, "raised from (soft 65536 bytes, hard 65536 bytes) to unlimited", unix.Rlimit{Cur: inf, Max: inf}},
		{"charged, no CAP_SYS_RESOURCE: Limited, soft raised to hard",
			fakeKernel{limit: unix.Rlimit{Cur: 65536, Max: 8 << 20}, memlockCharged: true},
			v1alpha1.MemlockLimited, "CAP_SYS_RESOURCE", unix.Rlimit{Cur: 8 << 20, Max: 8 << 20}},
		{"no map at all (no CAP_BPF): unknown, not blamed on the limit",
			fakeKernel{limit: unix.Rlimit{Cur: 65536, Max: 65536}, memlockCharged: true, mapErr: unix.EPERM},
			"", "create a BPF map under RLIMIT_MEMLOCK (soft 65536 bytes, hard 65536 bytes)", unix.Rlimit{Cur: 65536, Max: 65536}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := tc.kernel
			f := probeMemlock(k.ops())
			if f.Value != tc.want || !strings.Contains(f.Source+f.Error, tc.mention) {
				t.Errorf("fact %+v, want value %q mentioning %q", f, tc.want, tc.mention)
			}
			if (f.Value == "") == (f.Error == "") || (f.Value != "") == (f.Source == "") {
				t.Errorf("fact %+v: a value needs a source, an unknown an error", f)
			}
			if k.limit != tc.wantLimit {
				t.Errorf("limit after the probe %+v, want %+v", k.limit, tc.wantLimit)
			}
		})
	}
}

// TestProbeMemlockUnexpectedError: a zero-limit map creation failing with something else than
// EPERM says nothing about the limit.
func TestProbeMemlockUnexpectedError(t *testing.T) {
	k := fakeKernel{limit: unix.Rlimit{Cur: 65536, Max: 65536}}
	ops := k.ops()
	calls := 0
	ops.createMap = func() error {
		if calls++; calls == 2 {
			return errors.New("boom")
		}
		return nil
	}
	if f := probeMemlock(ops); f.Value != "" || !strings.Contains(f.Error, "boom") {
		t.Errorf("fact %+v, want unknown with the error", f)
	}
	if k.limit.Cur != 65536 {
		t.Errorf("limit not restored: %+v", k.limit)
	}
}
