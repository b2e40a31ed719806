package selection

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
)

// rule is one selection rule of DESIGN §6: when test answers Yes the drivers are excluded, when it
// answers Unknown they are ranked lower. test returns the facts it rests on, in words.
type rule struct {
	id      string
	drivers []v1alpha1.Driver
	// sensors the rule applies to; empty means every sensor.
	sensors   []v1alpha1.SensorKind
	why       string
	reference string
	test      func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string)
}

const lockdownRef = "https://man7.org/linux/man-pages/man7/kernel_lockdown.7.html"

var rules = []rule{
	{
		id: "cos-blocks-kmod", drivers: []v1alpha1.Driver{v1alpha1.DriverKmod},
		why:       "Container-Optimized OS only loads modules it signed itself",
		reference: "https://cloud.google.com/container-optimized-os/docs/concepts/security",
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			return distroIs(f, "cos")
		},
	},
	{
		id: "oracle-uek-blocks-kmod", drivers: []v1alpha1.Driver{v1alpha1.DriverKmod},
		why: "Oracle's Unbreakable Enterprise Kernel is not a kmod target (DESIGN §6)",
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			rel := f.Kernel.Release.Value
			if rel == "" {
				return v1alpha1.AnswerUnknown, unknownFact("kernel release", f.Kernel.Release.Error)
			}
			return yesIf(strings.Contains(rel, "uek")), "kernel release " + rel
		},
	},
	{
		id: "lockdown-blocks-kmod", drivers: []v1alpha1.Driver{v1alpha1.DriverKmod},
		why:       "kernel lockdown refuses unsigned modules",
		reference: lockdownRef,
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			mode := f.Lockdown.Value
			if mode == "" {
				return v1alpha1.AnswerUnknown, unknownFact("lockdown", f.Lockdown.Error)
			}
			return yesIf(mode != "none"), "lockdown " + mode
		},
	},
	{
		id: "secure-boot-blocks-kmod", drivers: []v1alpha1.Driver{v1alpha1.DriverKmod},
		why:       "Secure Boot kernels refuse unsigned modules",
		reference: lockdownRef,
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			return boolTest(f.SecureBoot, "Secure Boot")
		},
	},
	{
		id: "no-module-support-blocks-kmod", drivers: []v1alpha1.Driver{v1alpha1.DriverKmod},
		why: "the kernel has no loadable module support",
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			a, facts := boolTest(f.Modules.Supported, "module support")
			return invert(a), facts
		},
	},
	{
		id: "modules-disabled-blocks-kmod", drivers: []v1alpha1.Driver{v1alpha1.DriverKmod},
		why: "module loading is switched off (modules_disabled=1)",
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			if f.Modules.Supported.Answer == v1alpha1.AnswerNo {
				return v1alpha1.AnswerNo, "no module support (covered by its own rule)"
			}
			return boolTest(f.Modules.Disabled, "modules_disabled")
		},
	},
	{
		id: "no-btf-blocks-modern-ebpf", drivers: []v1alpha1.Driver{v1alpha1.DriverModernEBPF},
		why: "modern_ebpf is CO-RE and needs the kernel's BTF",
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			a, facts := boolTest(f.BTF.Vmlinux, "vmlinux BTF")
			return invert(a), facts
		},
	},
	{
		id: "tp-btf-failed-blocks-modern-ebpf", drivers: []v1alpha1.Driver{v1alpha1.DriverModernEBPF},
		why: "modern_ebpf attaches tp_btf programs, and loading one failed here",
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			a, facts := boolTest(f.EBPF.TPBTF, "tp_btf load and attach")
			return invert(a), facts
		},
	},
	{
		id: "ringbuf-failed-blocks-modern-ebpf", drivers: []v1alpha1.Driver{v1alpha1.DriverModernEBPF},
		why: "modern_ebpf sends events through BPF ring buffers, and creating one failed here",
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			a, facts := boolTest(f.EBPF.RingBuffer, "ring buffer creation")
			return invert(a), facts
		},
	},
	{
		id: "raw-tracepoint-failed-blocks-ebpf", drivers: []v1alpha1.Driver{v1alpha1.DriverEBPF},
		why: "the ebpf driver attaches raw tracepoint programs, and loading one failed here",
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			a, facts := boolTest(f.EBPF.RawTracepoint, "raw tracepoint load and attach")
			return invert(a), facts
		},
	},
	{
		// The agent measured its own process: the built-in sensor loads from it (and, like
		// cilium/ebpf's rlimit.RemoveMemlock, wants the limit unlimited where it applies). A Falco
		// container has capabilities of its own (it keeps SYS_RESOURCE, controllers/falco.go).
		id: "memlock-blocks-builtin-ebpf", drivers: []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF},
		sensors:   []v1alpha1.SensorKind{v1alpha1.SensorBuiltin},
		why:       "the built-in sensor needs RLIMIT_MEMLOCK lifted on this kernel and the agent could not lift it (its container does not add SYS_RESOURCE, which a host's capability bounding set may lack)",
		reference: "https://ebpf-go.dev/concepts/rlimit/",
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			m := f.EBPF.Memlock
			switch {
			case m == nil:
				return v1alpha1.AnswerNo, "memlock not reported by this agent"
			case m.Value == "":
				return v1alpha1.AnswerUnknown, unknownFact("memlock", m.Error)
			}
			return yesIf(m.Value == v1alpha1.MemlockLimited), fmt.Sprintf("memlock %s (%s)", m.Value, m.Source)
		},
	},
	{
		// Ranked lower, not ruled out: a privileged Falco pod (a profile that also allows kmod or
		// ebpf) runs where the runtime already gives containers an unlimited hard limit, and the
		// self-test is the proof either way. Where the pod is least-privileged (modern_ebpf only)
		// its container does not start, the self-test fails and this reason says why.
		id: "no-sys-resource-ranks-falco-modern-ebpf-lower", drivers: []v1alpha1.Driver{v1alpha1.DriverModernEBPF},
		sensors: []v1alpha1.SensorKind{v1alpha1.SensorFalco},
		why: "Falco's modern_ebpf (libpman) raises RLIMIT_MEMLOCK to unlimited on every kernel and exits when it cannot, " +
			"which takes SYS_RESOURCE unless the container's hard limit is unlimited already, and its least-privileged " +
			"container adds SYS_RESOURCE, so it does not start where the host cannot grant it",
		reference: "https://github.com/falcosecurity/libs/blob/master/userspace/libpman/src/configuration.c",
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			a, facts := lacksCapability(f.BoundingSet, unix.CAP_SYS_RESOURCE, "SYS_RESOURCE")
			if a == v1alpha1.AnswerYes {
				a = v1alpha1.AnswerUnknown
			}
			return a, facts
		},
	},
	{
		id: "lockdown-confidentiality-blocks-ebpf", drivers: []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF},
		why:       "lockdown confidentiality forbids eBPF from reading kernel memory",
		reference: "https://github.com/falcosecurity/falco/issues/3416",
		test: func(f v1alpha1.ProbeFacts) (v1alpha1.Answer, string) {
			mode := f.Lockdown.Value
			if mode == "" {
				return v1alpha1.AnswerUnknown, unknownFact("lockdown", f.Lockdown.Error)
			}
			return yesIf(mode == "confidentiality"), "lockdown " + mode
		},
	},
}

func yesIf(b bool) v1alpha1.Answer {
	if b {
		return v1alpha1.AnswerYes
	}
	return v1alpha1.AnswerNo
}

func invert(a v1alpha1.Answer) v1alpha1.Answer {
	switch a {
	case v1alpha1.AnswerYes:
		return v1alpha1.AnswerNo
	case v1alpha1.AnswerNo:
		return v1alpha1.AnswerYes
	}
	return a
}

// boolTest reads a BoolFact; anything but Yes or No (an empty answer too) is Unknown.
func boolTest(b v1alpha1.BoolFact, name string) (v1alpha1.Answer, string) {
	switch b.Answer {
	case v1alpha1.AnswerYes, v1alpha1.AnswerNo:
		s := fmt.Sprintf("%s: %s", name, b.Answer)
		if b.Error != "" {
			s += " (" + b.Error + ")"
		} else if b.Source != "" {
			s += " (" + b.Source + ")"
		}
		return b.Answer, s
	}
	return v1alpha1.AnswerUnknown, unknownFact(name, b.Error)
}

// unknownFact says what was observed about a fact nobody established: the agent never reported
// it (not probed: an older agent, or a probe not run yet), or its probe failed on this node.
func unknownFact(name, err string) string {
	if err == "" {
		return name + " unknown: not probed"
	}
	return name + " unknown: the probe failed on this node: " + err
}

// lacksCapability answers whether the host's capability bounding set lacks capability bit.
func lacksCapability(bs *v1alpha1.StringFact, bit int, name string) (v1alpha1.Answer, string) {
	switch {
	case bs == nil:
		return v1alpha1.AnswerNo, "capability bounding set not reported by this agent"
	case bs.Value == "":
		return v1alpha1.AnswerUnknown, unknownFact("capability bounding set", bs.Error)
	}
	mask, err := strconv.ParseUint(bs.Value, 16, 64)
	if err != nil {
		return v1alpha1.AnswerUnknown, fmt.Sprintf("capability bounding set %q: %v", bs.Value, err)
	}
	if mask&(1<<bit) != 0 {
		return v1alpha1.AnswerNo, fmt.Sprintf("the host's capability bounding set %s has %s", bs.Value, name)
	}
	return v1alpha1.AnswerYes, fmt.Sprintf("the host's capability bounding set %s (%s) lacks %s", bs.Value, bs.Source, name)
}

func distroIs(f v1alpha1.ProbeFacts, id string) (v1alpha1.Answer, string) {
	if f.Distro.ID == "" {
		return v1alpha1.AnswerUnknown, unknownFact("distro", f.Distro.Error)
	}
	return yesIf(f.Distro.ID == id), "distro " + f.Distro.ID
}

type driverEval struct {
	reasons   []v1alpha1.DriverReason
	excluded  bool
	uncertain bool
}

func (e *driverEval) exclude(r v1alpha1.DriverReason) {
	e.excluded = true
	e.reasons = append(e.reasons, clip(r))
}

func (e *driverEval) doubt(r v1alpha1.DriverReason) {
	e.uncertain = true
	e.reasons = append(e.reasons, clip(r))
}

// evaluate applies the rules, the known issues and the failed attempts to one driver.
func evaluate(drv v1alpha1.Driver, f v1alpha1.ProbeFacts, kind v1alpha1.SensorKind, falco *kernelversion.Version,
	issues []knownissues.Issue, failed []v1alpha1.FailedAttempt) driverEval {
	var e driverEval
	if kind == v1alpha1.SensorFalco && drv == v1alpha1.DriverEBPF && falco == nil {
		e.doubt(v1alpha1.DriverReason{Driver: drv, Source: v1alpha1.ReasonSourceSensor, Rule: "falco-0.44-removed-ebpf",
			Message:   "ranked lower: Falco version unknown, and Falco 0.44.0 and later have no ebpf driver",
			Reference: "https://github.com/falcosecurity/falco/releases/tag/0.44.0"})
	}
	for _, r := range rules {
		if !contains(r.drivers, drv) || (len(r.sensors) > 0 && !slices.Contains(r.sensors, kind)) {
			continue
		}
		switch a, facts := r.test(f); a {
		case v1alpha1.AnswerYes:
			e.exclude(v1alpha1.DriverReason{Driver: drv, Source: v1alpha1.ReasonSourceRule, Rule: r.id, Reference: r.reference,
				Message: fmt.Sprintf("%s: %s", r.why, facts)})
		case v1alpha1.AnswerUnknown:
			e.doubt(v1alpha1.DriverReason{Driver: drv, Source: v1alpha1.ReasonSourceRule, Rule: r.id, Reference: r.reference,
				Message: fmt.Sprintf("ranked lower, may not work: %s, and %s", r.why, facts)})
		}
	}
	for i := range issues {
		is := &issues[i]
		if !contains(is.Drivers, drv) {
			continue
		}
		ev := is.Evaluate(f, kind, falco)
		switch ev.Applicability {
		case knownissues.Applies:
			e.exclude(v1alpha1.DriverReason{Driver: drv, Source: v1alpha1.ReasonSourceKnownIssue, Rule: is.ID, Reference: is.Reference,
				Message: fmt.Sprintf("known issue: %s (%s)", is.Title, strings.Join(ev.Matched, ", "))})
		case knownissues.MayApply:
			e.doubt(v1alpha1.DriverReason{Driver: drv, Source: v1alpha1.ReasonSourceKnownIssue, Rule: is.ID, Reference: is.Reference,
				Message: fmt.Sprintf("ranked lower, known issue may apply: %s (%s)", is.Title, strings.Join(append(ev.Unknown, ev.Matched...), ", "))})
		}
	}
	// The latest failure of this driver on the node is the one that counts.
	for i := len(failed) - 1; i >= 0; i-- {
		if failed[i].Driver == drv {
			e.exclude(v1alpha1.DriverReason{Driver: drv, Source: v1alpha1.ReasonSourceFailedAttempt, Rule: "self-test-failed",
				Message: fmt.Sprintf("the self-test failed with %s on this node (attempt %d): %s", drv, failed[i].Attempt, failed[i].Reason)})
			break
		}
	}
	return e
}

func contains(ds []v1alpha1.Driver, d v1alpha1.Driver) bool {
	for _, x := range ds {
		if x == d {
			return true
		}
	}
	return false
}

// clip keeps a message within the API's MaxLength.
func clip(r v1alpha1.DriverReason) v1alpha1.DriverReason {
	if len(r.Message) > 1024 {
		r.Message = strings.ToValidUTF8(r.Message[:1021], "") + "..."
	}
	return r
}
