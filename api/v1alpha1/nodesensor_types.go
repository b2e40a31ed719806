package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeSensorSpec is the manager's decision for one node. Only the manager writes it.
//
// Structs written whole (sensor, selfTest) are atomic: the API server tracks each as one managed
// field. Tracked leaf by leaf, the managed fields were half the stored object, and every write
// paid for them.
type NodeSensorSpec struct {
	// profile is the name of the SecurityProfile that governs this node.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Profile string `json:"profile"`

	// driver is the driver the agent must start the sensor with. Empty while no decision is made
	// (no probe yet, or the rollout has not reached this node) and when no driver is left.
	// +optional
	Driver Driver `json:"driver,omitempty"`

	// attempt counts decisions for this node, starting at 1; it grows on every new driver
	// assignment, so the agent can tell a new decision from an old one.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Attempt int32 `json:"attempt,omitempty"`

	// provenAttempt is set when this attempt re-verifies the driver that passed the previous
	// attempt (after an agent upgrade or a profile edit): the attempt the manager saw proven.
	// That proof stands until the new verdict is in; an agent's claim about an earlier attempt
	// counts for nothing without it.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ProvenAttempt int32 `json:"provenAttempt,omitempty"`

	// predictedFrom names the node whose proof this node's driver was taken from, before this
	// node's own probe: nodes that look alike to the kubelet (kernel, OS image, architecture,
	// cloud) start with the driver the first of them proved, which saves a decision per node.
	// The manager counts the proof only once this node's own facts choose the same driver.
	// With an empty driver the prediction was withdrawn (no agent answered in time): the node
	// waits for its probe, and its next decision is a new attempt.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	PredictedFrom string `json:"predictedFrom,omitempty"`

	// candidates is the ordered list of drivers still eligible on this node, driver first.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=3
	Candidates []Driver `json:"candidates,omitempty"`

	// reasons explain, for every driver that is not the chosen one, why it was skipped.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Reasons []DriverReason `json:"reasons,omitempty"`

	// sensor is the profile's sensor, copied so the agent needs to read only its own NodeSensor.
	// +optional
	// +structType=atomic
	Sensor SensorSpec `json:"sensor,omitempty"`

	// selfTest is the profile's self-test settings, copied for the same reason.
	// +optional
	// +structType=atomic
	SelfTest SelfTestSpec `json:"selfTest,omitempty"`

	// failedAttempts records the drivers whose self-test failed on this node, oldest first.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	FailedAttempts []FailedAttempt `json:"failedAttempts,omitempty"`
}

// ReasonSource says which kind of knowledge excluded a driver.
// +kubebuilder:validation:Enum=Rule;KnownIssue;FailedAttempt;Profile;Override;Sensor;Fleet
type ReasonSource string

const (
	// ReasonSourceRule is a selection rule derived from a probed fact (for example lockdown).
	ReasonSourceRule ReasonSource = "Rule"
	// ReasonSourceKnownIssue is an entry of the known-issue matrix.
	ReasonSourceKnownIssue ReasonSource = "KnownIssue"
	// ReasonSourceFailedAttempt is a self-test that failed with that driver on this node.
	ReasonSourceFailedAttempt ReasonSource = "FailedAttempt"
	// ReasonSourceProfile is the profile's preference list, which does not allow the driver.
	ReasonSourceProfile ReasonSource = "Profile"
	// ReasonSourceOverride is a matching override, whose preference list does not allow the driver.
	ReasonSourceOverride ReasonSource = "Override"
	// ReasonSourceSensor is the sensor, which does not offer the driver (for example Falco 0.44 and ebpf).
	ReasonSourceSensor ReasonSource = "Sensor"
	// ReasonSourceFleet is a verdict learned on other nodes of the same group (kernel release,
	// architecture, distro and sensor): a driver that failed there for a reason that belongs to
	// the kernel, or that passed there.
	ReasonSourceFleet ReasonSource = "Fleet"
)

// DriverReason explains why a driver was not chosen.
type DriverReason struct {
	// driver is the driver that was skipped or ranked lower.
	Driver Driver `json:"driver"`
	// source is the kind of knowledge behind the reason.
	Source ReasonSource `json:"source"`
	// rule is a short stable identifier of the rule or known issue (for example lockdown-blocks-kmod or falco#3286).
	// +optional
	// +kubebuilder:validation:MaxLength=128
	Rule string `json:"rule,omitempty"`
	// message says why, in words, with the facts it rests on.
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message"`
	// reference is an upstream link or issue for the fact behind the rule.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Reference string `json:"reference,omitempty"`
}

// FailedAttempt is a driver whose self-test failed on the node.
type FailedAttempt struct {
	// driver is the driver that failed.
	Driver Driver `json:"driver"`
	// attempt is the decision number it was assigned under.
	// +kubebuilder:validation:Minimum=1
	Attempt int32 `json:"attempt"`
	// reason is the self-test's reason, for example the failed check or a load error.
	// +kubebuilder:validation:MaxLength=1024
	Reason string `json:"reason"`
	// time is when the manager recorded the failure.
	Time metav1.Time `json:"time"`
	// kernelRelease is the kernel the self-test failed on. A failure counts only against the same
	// kernel: after an upgrade to another kernel the driver is eligible again.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	KernelRelease string `json:"kernelRelease,omitempty"`
	// sensor is the sensor and version the self-test ran, as a FleetGroup names it (for example
	// "Falco 0.38.1"): the failure is shared only with the nodes of the same kernel and sensor.
	// +optional
	// +kubebuilder:validation:MaxLength=600
	Sensor string `json:"sensor,omitempty"`
}

// Answer is a three-valued probe answer.
// +kubebuilder:validation:Enum=Yes;No;Unknown
type Answer string

const (
	AnswerYes     Answer = "Yes"
	AnswerNo      Answer = "No"
	AnswerUnknown Answer = "Unknown"
)

// BoolFact is a yes/no fact with how it was obtained. Unknown carries the error that prevented an answer.
type BoolFact struct {
	// answer is Yes, No or Unknown (the fact could not be established; see error).
	Answer Answer `json:"answer"`
	// source says how the answer was obtained (a file read, a program loaded, a label).
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Source string `json:"source,omitempty"`
	// error is the error that prevented an answer, or that a No rests on (for example a denied load).
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Error string `json:"error,omitempty"`
}

// StringFact is a textual fact with how it was obtained. An empty value with an error is unknown.
type StringFact struct {
	// value is the fact; empty when it could not be established. At most 256 characters, the
	// bound of every field the manager copies a fact into (FailedAttempt.kernelRelease).
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Value string `json:"value,omitempty"`
	// source says how the value was obtained.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Source string `json:"source,omitempty"`
	// error is the error that prevented reading the fact.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Error string `json:"error,omitempty"`
}

// Known returns whether the fact was established.
func (f StringFact) Known() bool { return f.Value != "" }

// ProbeFacts are the facts the agent measured on its node.
type ProbeFacts struct {
	// kernel identifies the running kernel.
	Kernel KernelFacts `json:"kernel"`
	// btf describes the kernel's type information.
	BTF BTFFacts `json:"btf"`
	// ebpf records what was proven by loading and attaching programs.
	EBPF EBPFFacts `json:"ebpf"`
	// lockdown is the kernel lockdown mode: none, integrity or confidentiality.
	Lockdown StringFact `json:"lockdown"`
	// modules describes kernel module support.
	Modules ModuleFacts `json:"modules"`
	// secureBoot is whether UEFI Secure Boot is enabled.
	SecureBoot BoolFact `json:"secureBoot"`
	// overlayfs is whether the kernel offers overlayfs (from /proc/filesystems).
	Overlayfs BoolFact `json:"overlayfs"`
	// distro is the host operating system from its os-release file.
	Distro DistroFacts `json:"distro"`
	// cloud is the cloud provider of the node.
	Cloud StringFact `json:"cloud"`
	// boundingSet is the capability bounding set of the host's PID 1 (CapBnd of /proc/1/status,
	// in hexadecimal as the kernel prints it). No process on the node holds a capability outside
	// it, so a container that adds one does not start. Absent where it was not measured (an older
	// agent).
	// +optional
	BoundingSet *StringFact `json:"boundingSet,omitempty"`
	// probeTime is when the facts were collected.
	// +optional
	ProbeTime *metav1.Time `json:"probeTime,omitempty"`
}

// KernelFacts identify the kernel.
type KernelFacts struct {
	// release is the kernel release as uname prints it, for example 5.10.219-208.866.amzn2.x86_64.
	Release StringFact `json:"release"`
	// version is the numeric version parsed from the release, major.minor.patch (for example 5.10.219).
	Version StringFact `json:"version"`
	// architecture is the machine architecture in GOARCH spelling (amd64, arm64).
	Architecture StringFact `json:"architecture"`
	// bootID changes on every boot; a new boot ID triggers a new self-test.
	BootID StringFact `json:"bootID"`
}

// BTFFacts describe the kernel's BTF.
type BTFFacts struct {
	// vmlinux is whether /sys/kernel/btf/vmlinux exists and parses.
	Vmlinux BoolFact `json:"vmlinux"`
	// overlayTypes is where overlayfs's types are described: Vmlinux (overlay built in), Module
	// (/sys/kernel/btf/overlay, Linux 5.11+) or Absent (the falco#3286 situation).
	OverlayTypes StringFact `json:"overlayTypes"`
}

// Values of BTFFacts.OverlayTypes.
const (
	OverlayTypesVmlinux = "Vmlinux"
	OverlayTypesModule  = "Module"
	OverlayTypesAbsent  = "Absent"
)

// EBPFFacts are eBPF abilities proven by doing, never inferred from a version.
type EBPFFacts struct {
	// tpBTF is whether a tp_btf/sched_process_exec program loads and attaches.
	TPBTF BoolFact `json:"tpBTF"`
	// rawTracepoint is whether a raw_tp/sched_process_exec program loads and attaches.
	RawTracepoint BoolFact `json:"rawTracepoint"`
	// ringBuffer is whether a BPF ring buffer map can be created.
	RingBuffer BoolFact `json:"ringBuffer"`
	// memlock is how the kernel limits the agent's BPF memory: MemcgAccounting (Linux 5.11+:
	// charged to the memory cgroup, RLIMIT_MEMLOCK does not apply), Unlimited (charged to
	// RLIMIT_MEMLOCK, which is or was raised to unlimited) or Limited (charged to RLIMIT_MEMLOCK,
	// and the agent could not raise it: it lacks CAP_SYS_RESOURCE). Measured by creating a map
	// under a zero limit, as cilium/ebpf's rlimit package does. Absent where it was not measured
	// (an older agent).
	// +optional
	Memlock *StringFact `json:"memlock,omitempty"`
}

// Values of EBPFFacts.Memlock.
const (
	MemlockMemcgAccounting = "MemcgAccounting"
	MemlockUnlimited       = "Unlimited"
	MemlockLimited         = "Limited"
)

// ModuleFacts describe loadable kernel module support.
type ModuleFacts struct {
	// supported is whether the kernel supports loadable modules (/proc/modules exists).
	Supported BoolFact `json:"supported"`
	// disabled is whether module loading is switched off (/proc/sys/kernel/modules_disabled = 1).
	Disabled BoolFact `json:"disabled"`
}

// DistroFacts identify the host operating system.
type DistroFacts struct {
	// id is os-release's ID (amzn, bottlerocket, cos, ubuntu, rhel, ol, talos, debian, flatcar...).
	// +optional
	// +kubebuilder:validation:MaxLength=64
	ID string `json:"id,omitempty"`
	// versionID is os-release's VERSION_ID.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	VersionID string `json:"versionID,omitempty"`
	// prettyName is os-release's PRETTY_NAME.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	PrettyName string `json:"prettyName,omitempty"`
	// source is the file the facts were read from.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Source string `json:"source,omitempty"`
	// error is the error that prevented reading them.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Error string `json:"error,omitempty"`
}

// SelfTestResult is the verdict of a self-test or of one check.
// +kubebuilder:validation:Enum=Passed;Failed;NotApplicable;Inconclusive
type SelfTestResult string

const (
	// SelfTestPassed means the sensor saw what it must see.
	SelfTestPassed SelfTestResult = "Passed"
	// SelfTestFailed means an expected event was missing or wrong, or the sensor did not start.
	SelfTestFailed SelfTestResult = "Failed"
	// SelfTestNotApplicable means the check could not be staged on this node (never counts as Passed).
	SelfTestNotApplicable SelfTestResult = "NotApplicable"
	// SelfTestInconclusive means the run proved nothing either way: a check saw no event while the
	// sensor was losing events (a busy node). It never counts as Passed, nor as a failed attempt
	// against the driver: the agent runs the self-test again, with backoff. Only a run without
	// drops can fail a driver.
	SelfTestInconclusive SelfTestResult = "Inconclusive"
)

// ConditionSensorHealthy is the agent's NodeSensor status condition that says whether the sensor
// still works between self-tests (the built-in sensor's reader alive and draining, Falco's health
// endpoint answering). The agent sets it False within seconds of the sensor dying, and True again
// only together with a passing self-test; a node whose condition is False is not verified.
const ConditionSensorHealthy = "SensorHealthy"

// SelfTestStatus is the agent's report of its last self-test.
type SelfTestStatus struct {
	// driver is the driver the sensor ran with.
	Driver Driver `json:"driver"`
	// attempt is the NodeSensor spec.attempt this self-test answers.
	// +kubebuilder:validation:Minimum=0
	Attempt int32 `json:"attempt"`
	// result is the verdict: Passed only when every check passed; Inconclusive when a check saw
	// no event while the sensor was dropping events.
	Result SelfTestResult `json:"result"`
	// reason is a CamelCase reason for a failure (for example CheckFailed, SensorLoadFailed).
	// +optional
	// +kubebuilder:validation:MaxLength=128
	Reason string `json:"reason,omitempty"`
	// message explains the verdict; for a load failure it holds the end of the verifier log.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Message string `json:"message,omitempty"`
	// checks are the per-check results.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=4
	Checks []CheckResult `json:"checks,omitempty"`
	// startTime is when the self-test started.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// finishTime is when it finished.
	// +optional
	FinishTime *metav1.Time `json:"finishTime,omitempty"`
	// bootID is the boot the self-test ran in; a new boot invalidates it, and an empty one
	// proves nothing.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	BootID string `json:"bootID,omitempty"`
	// agentVersion is the version of the agent that ran it.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	AgentVersion string `json:"agentVersion,omitempty"`
}

// CheckResult is the outcome of one self-test check.
type CheckResult struct {
	// name is the check.
	Name CheckName `json:"name"`
	// result is Passed, Failed, NotApplicable or Inconclusive (no event while events were dropped).
	Result SelfTestResult `json:"result"`
	// expected is what the sensor had to report, for example "upper layer".
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Expected string `json:"expected,omitempty"`
	// observed is what it reported, or "no event within 10s".
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Observed string `json:"observed,omitempty"`
	// latency is the time from the exec to the event.
	// +optional
	Latency *metav1.Duration `json:"latency,omitempty"`
	// method is how the sensor decided the layer (for the built-in sensor: CORE or InodeOffset).
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Method string `json:"method,omitempty"`
	// message explains a failure or a NotApplicable.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
}

// NodeSensorStatus is the agent's report. Only the agent of the node writes it.
//
// probe and selfTest are written whole, so they are atomic (see NodeSensorSpec).
type NodeSensorStatus struct {
	// probe holds the facts measured on the node.
	// +optional
	// +structType=atomic
	Probe *ProbeFacts `json:"probe,omitempty"`
	// selfTest is the last self-test result.
	// +optional
	// +structType=atomic
	SelfTest *SelfTestStatus `json:"selfTest,omitempty"`
	// heartbeatTime is the last time the agent reported it was alive.
	// +optional
	HeartbeatTime *metav1.Time `json:"heartbeatTime,omitempty"`
	// agentVersion is the version of the agent running on the node.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	AgentVersion string `json:"agentVersion,omitempty"`
	// conditions are the agent's own conditions: SensorHealthy says whether the sensor still works
	// between self-tests.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// NodeSensor is the per-node state of DriverPilot, named after its node: the facts measured there
// (status.probe), the driver decision and its reasons (spec) and the self-test verdict (status.selfTest).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=nsensor,categories=driverpilot
// +kubebuilder:printcolumn:name="Profile",type=string,JSONPath=`.spec.profile`
// +kubebuilder:printcolumn:name="Driver",type=string,JSONPath=`.spec.driver`
// +kubebuilder:printcolumn:name="Attempt",type=integer,JSONPath=`.spec.attempt`
// +kubebuilder:printcolumn:name="SelfTest",type=string,JSONPath=`.status.selfTest.result`
// +kubebuilder:printcolumn:name="Kernel",type=string,JSONPath=`.status.probe.kernel.release.value`
// +kubebuilder:printcolumn:name="Distro",type=string,JSONPath=`.status.probe.distro.id`,priority=1
// +kubebuilder:printcolumn:name="Heartbeat",type=date,JSONPath=`.status.heartbeatTime`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type NodeSensor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the manager's decision for the node.
	// +required
	Spec NodeSensorSpec `json:"spec"`

	// status is the agent's report from the node.
	// +optional
	Status NodeSensorStatus `json:"status,omitempty"`
}

// NodeSensorList is a list of NodeSensors.
//
// +kubebuilder:object:root=true
type NodeSensorList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodeSensor `json:"items"`
}

func init() {
	SchemeBuilder.Register(&NodeSensor{}, &NodeSensorList{})
}
