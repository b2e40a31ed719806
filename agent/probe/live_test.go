package probe

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// TestLiveProbeOnThisMachine runs the real probe on the running kernel and checks what is known
// of this project's machines (DESIGN §5, §8): kernel 6.18, vmlinux BTF, tp_btf, raw tracepoints
// and ring buffers work, no module support, lockdown integrity.
func TestLiveProbeOnThisMachine(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF programs and mount securityfs; run the tests as root")
	}
	unmount, err := MountSecurityFS("/")
	if err != nil {
		t.Fatalf("mount securityfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Errorf("unmount securityfs: %v", err)
		}
	})

	p := New("/")
	if !p.Live {
		t.Fatal("root / not taken for the running kernel")
	}
	f := p.Probe(context.Background(), Inputs{})

	if !strings.HasPrefix(f.Kernel.Version.Value, "6.18.") {
		t.Errorf("kernel version = %+v, want 6.18.x", f.Kernel.Version)
	}
	if f.Kernel.Architecture.Value != "amd64" && f.Kernel.Architecture.Value != "arm64" {
		t.Errorf("architecture = %+v", f.Kernel.Architecture)
	}
	if !f.Kernel.BootID.Known() {
		t.Errorf("boot ID = %+v", f.Kernel.BootID)
	}
	for name, tc := range map[string]struct {
		got  v1alpha1.BoolFact
		want v1alpha1.Answer
	}{
		"btf.vmlinux":        {f.BTF.Vmlinux, v1alpha1.AnswerYes},
		"ebpf.tpBTF":         {f.EBPF.TPBTF, v1alpha1.AnswerYes},
		"ebpf.rawTracepoint": {f.EBPF.RawTracepoint, v1alpha1.AnswerYes},
		"ebpf.ringBuffer":    {f.EBPF.RingBuffer, v1alpha1.AnswerYes},
		"modules.supported":  {f.Modules.Supported, v1alpha1.AnswerNo},
		"overlayfs":          {f.Overlayfs, v1alpha1.AnswerYes},
	} {
		if tc.got.Answer != tc.want {
			t.Errorf("%s = %+v, want %s", name, tc.got, tc.want)
		}
	}
	if f.Lockdown.Value != LockdownIntegrity {
		t.Errorf("lockdown = %+v, want integrity", f.Lockdown)
	}
	if f.BTF.OverlayTypes.Value == "" {
		t.Errorf("overlay types unknown: %s", f.BTF.OverlayTypes.Error)
	}
	if m := f.EBPF.Memlock; m == nil || m.Value != v1alpha1.MemlockMemcgAccounting {
		t.Errorf("ebpf.memlock = %+v, want MemcgAccounting (kernel 6.18)", m)
	}
	if bs := f.BoundingSet; bs == nil || !bs.Known() {
		t.Errorf("boundingSet = %+v, want PID 1's CapBnd", bs)
	}
}

func BenchmarkLiveProbe(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root to load BPF programs")
	}
	p := New("/")
	for b.Loop() {
		p.Probe(context.Background(), Inputs{})
	}
}
