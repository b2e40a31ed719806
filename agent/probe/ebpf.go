package probe

import (
	"context"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// execTracepoint is the tracepoint every exec sensor hooks.
const execTracepoint = "sched_process_exec"

// LiveAbilities proves eBPF abilities on the running kernel by loading and attaching minimal
// programs built with the asm package, then closing everything. It does not use
// features.HaveProgramType(Tracing), which answers "operation not permitted" on kernels where
// tp_btf works (DESIGN §5).
type LiveAbilities struct{}

// Probe runs the checks. Any error is No, with the error recorded. The memlock check runs first:
// it may raise RLIMIT_MEMLOCK, which the load checks then need on kernels before 5.11.
func (LiveAbilities) Probe(ctx context.Context) v1alpha1.EBPFFacts {
	memlock := probeMemlock(liveMemlockOps)
	return v1alpha1.EBPFFacts{
		Memlock:       &memlock,
		TPBTF:         answer(probeTPBTF(), "loaded and attached tp_btf/"+execTracepoint),
		RawTracepoint: answer(probeRawTracepoint(), "loaded and attached raw_tp/"+execTracepoint),
		RingBuffer:    answer(probeRingBuffer(), "created a BPF ring buffer map"),
	}
}

func answer(err error, source string) v1alpha1.BoolFact {
	if err != nil {
		return v1alpha1.BoolFact{Answer: v1alpha1.AnswerNo, Source: "load attempt", Error: err.Error()}
	}
	return v1alpha1.BoolFact{Answer: v1alpha1.AnswerYes, Source: source}
}

// returnZero is the smallest valid program body.
var returnZero = asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}

func probeTPBTF() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "dp_probe_tpbtf",
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceRawTp,
		AttachTo:     execTracepoint,
		Instructions: returnZero,
		License:      "GPL",
	})
	if err != nil {
		return fmt.Errorf("load tp_btf program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
	if err != nil {
		return fmt.Errorf("attach tp_btf program: %w", err)
	}
	return closeLink(l)
}

func probeRawTracepoint() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "dp_probe_rawtp",
		Type:         ebpf.RawTracepoint,
		Instructions: returnZero,
		License:      "GPL",
	})
	if err != nil {
		return fmt.Errorf("load raw tracepoint program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: execTracepoint, Program: prog})
	if err != nil {
		return fmt.Errorf("attach raw tracepoint program: %w", err)
	}
	return closeLink(l)
}

func probeRingBuffer() error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "dp_probe_rb",
		Type:       ebpf.RingBuf,
		MaxEntries: uint32(os.Getpagesize()),
	})
	if err != nil {
		return fmt.Errorf("create ring buffer: %w", err)
	}
	if err := m.Close(); err != nil {
		return fmt.Errorf("close ring buffer: %w", err)
	}
	return nil
}

func closeLink(l link.Link) error {
	if err := l.Close(); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	return nil
}
