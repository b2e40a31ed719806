package controllers

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// AgentCapability is a Linux capability the agent container adds after dropping ALL.
type AgentCapability struct {
	// Name is the capability as Kubernetes spells it (no CAP_ prefix).
	Name corev1.Capability
	// Why is what the agent does with it.
	Why string
}

// AgentCapabilities is every capability the agent container adds after dropping ALL, and the
// only place that list is written: the DaemonSet (and so the init step of a Falco pod) renders
// it, the pod template carries it with the reasons (CapabilitiesAnnotation), and the kernel test
// in test/caps runs the real probe and self-test under exactly this set and with each one left
// out.
//
// BPF and PERFMON are not in it: every kernel check that accepts them also accepts SYS_ADMIN
// (bpf_capable(), perfmon_capable()), which the mounts need anyway, so they would grant nothing
// more; kernels before 5.8 do not have them, and older container runtimes refuse to start a
// container that names them. SYS_RESOURCE is not in it: it only raises RLIMIT_MEMLOCK, which
// kernels from 5.11 no longer charge BPF memory to, and hosts whose capability bounding set
// lacks it (runc then fails with "unable to apply caps: operation not permitted") could not
// start the agent at all. Where the kernel does charge BPF memory to RLIMIT_MEMLOCK and it
// cannot be raised, the probe records it (ebpf.memlock) and the selection names it.
var AgentCapabilities = []AgentCapability{
	{Name: "SYS_ADMIN", Why: "mount the self-test's private overlay and tmpfs, and securityfs to read the lockdown mode; " +
		"load and attach the sensor's and the probe's BPF programs and maps and read kernel memory from them " +
		"(covers BPF and PERFMON, which kernels before 5.8 lack), and perf event buffers where perf_event_paranoid > 2 demands it (Debian, Ubuntu)"},
	{Name: "DAC_OVERRIDE", Why: "overlayfs makes its work directory (work/work) mode 0000 and creates files in it with the mounter's " +
		"credentials, at mount (O_TMPFILE and RENAME_WHITEOUT checks) and on every copy-up; without it the self-test's " +
		"overlay mount fails with EACCES, whatever modes the self-test gives its own directories"},
}

// CapabilitiesAnnotation on the agent pod template lists the added capabilities, one per line
// as "NAME: why", so the manifest a user reads says why each is there.
const CapabilitiesAnnotation = "security.driverpilot.io/capabilities"

// AgentCapabilityNames are the names of AgentCapabilities, in order.
func AgentCapabilityNames() []corev1.Capability {
	names := make([]corev1.Capability, len(AgentCapabilities))
	for i, c := range AgentCapabilities {
		names[i] = c.Name
	}
	return names
}

// agentCapabilityReasons is the value of CapabilitiesAnnotation.
func agentCapabilityReasons() string {
	lines := make([]string, len(AgentCapabilities))
	for i, c := range AgentCapabilities {
		lines[i] = string(c.Name) + ": " + c.Why
	}
	return strings.Join(lines, "\n")
}
