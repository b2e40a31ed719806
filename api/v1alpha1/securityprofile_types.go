package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// SensorKind says which runtime-security sensor runs on the selected nodes.
// +kubebuilder:validation:Enum=Builtin;Falco
type SensorKind string

const (
	// SensorBuiltin is DriverPilot's own eBPF exec sensor (drivers modern_ebpf and ebpf).
	SensorBuiltin SensorKind = "Builtin"
	// SensorFalco is the user's Falco image, run with the driver chosen for each node.
	SensorFalco SensorKind = "Falco"
)

// SecurityProfileSpec is the desired protection: which nodes, which sensor, which drivers are
// allowed, how to roll out and what must be proven before a node is called protected.
//
// +kubebuilder:validation:XValidation:rule="!has(self.selfTest) || !has(self.selfTest.timeout) || !has(self.selfTest.interval) || duration(self.selfTest.interval) > duration(self.selfTest.timeout)",message="selfTest.interval must be longer than selfTest.timeout"
type SecurityProfileSpec struct {
	// nodeSelector selects the nodes this profile protects. Empty or absent selects every node.
	// +optional
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, (e.operator in ['In', 'NotIn'] && has(e.values) && size(e.values) > 0) || (e.operator in ['Exists', 'DoesNotExist'] && (!has(e.values) || size(e.values) == 0)))",message="each matchExpressions operator must be In or NotIn with values, or Exists or DoesNotExist without values"
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// sensor is the runtime-security sensor to run on the selected nodes.
	// +optional
	// +kubebuilder:default={kind: Builtin}
	Sensor SensorSpec `json:"sensor,omitempty"`

	// drivers says which drivers are allowed, in which order, and per-node exceptions.
	// +optional
	// +kubebuilder:default={preference: {modern_ebpf, ebpf, kmod}}
	Drivers DriverPolicy `json:"drivers,omitempty"`

	// selfTest says what the agent must prove on a node before it is marked RuntimeSecurityReady.
	// +optional
	// +kubebuilder:default={}
	SelfTest SelfTestSpec `json:"selfTest,omitempty"`

	// rollout paces the verification of nodes: canary nodes first, then at most maxUnavailable
	// nodes verifying at once.
	// +optional
	// +kubebuilder:default={}
	Rollout RolloutSpec `json:"rollout,omitempty"`

	// enforcement says what DriverPilot does to nodes that are not verified.
	// +optional
	Enforcement EnforcementSpec `json:"enforcement,omitempty"`

	// fleet says whether the nodes learn from each other: grouped by what decides a driver's
	// behaviour (kernel release, architecture, distro, sensor), each group's first node verifies
	// before the rest of the group, and a group's verdicts on a driver are shared by its nodes.
	// +optional
	// +kubebuilder:default={}
	Fleet FleetSpec `json:"fleet,omitempty"`
}

// FleetLearning says whether a profile's nodes share what their self-tests proved.
// +kubebuilder:validation:Enum=Shared;Off
type FleetLearning string

const (
	// FleetLearningShared groups the nodes (kernel release, architecture, distro, sensor): each
	// group's first node verifies before the rest of the group starts; a driver that failed on a
	// node of the group for a reason that belongs to the kernel is skipped by the group's other
	// nodes (in a group of more than FleetLargeGroup nodes only once two nodes agree), and a
	// driver that passed there is ranked as proven on them.
	FleetLearningShared FleetLearning = "Shared"
	// FleetLearningOff makes each node learn alone: no group canaries, no shared verdicts.
	FleetLearningOff FleetLearning = "Off"
)

// FleetLargeGroup is the size above which a learned failure needs two agreeing nodes.
const FleetLargeGroup = 10

// FleetForgetBeforeAnnotation on a SecurityProfile makes its node groups forget every failure
// recorded before the time it holds (RFC 3339, for example 2026-11-30T14:00:00Z): a reset of
// the shared verdicts. Each node's own failed attempts still count on that node, and passes that
// stand now are never forgotten.
const FleetForgetBeforeAnnotation = "security.driverpilot.io/fleet-forget-before"

// FleetSpec says how a profile's nodes learn from each other.
type FleetSpec struct {
	// learning is Shared (the default: group canaries and shared verdicts) or Off (each node
	// learns alone).
	// +optional
	// +kubebuilder:default=Shared
	Learning FleetLearning `json:"learning,omitempty"`
}

// LearningOn reports whether fleet learning is on (Shared, or unset).
func (f FleetSpec) LearningOn() bool { return f.Learning != FleetLearningOff }

// SensorSpec describes the sensor.
//
// +kubebuilder:validation:XValidation:rule="self.kind != 'Falco' || (has(self.image) && size(self.image) > 0)",message="sensor.image is required when sensor.kind is Falco"
type SensorSpec struct {
	// kind is the sensor: Builtin (DriverPilot's eBPF exec sensor) or Falco.
	// +optional
	// +kubebuilder:default=Builtin
	Kind SensorKind `json:"kind,omitempty"`

	// image is the sensor's container image. Required for Falco; for Builtin the agent's own image
	// is used when it is empty.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image,omitempty"`

	// falcoVersion is the Falco version the image runs (for example 0.38.2). When omitted it is
	// derived from the image tag. It decides which drivers exist and which known issues apply.
	// +optional
	// +kubebuilder:validation:Pattern=`^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$`
	FalcoVersion string `json:"falcoVersion,omitempty"`
}

// DriverPolicy is the ordered list of allowed drivers and its per-node overrides.
type DriverPolicy struct {
	// preference is the ordered list of allowed drivers; the first one that is eligible on a node
	// is tried first, and a failed self-test falls back to the next. Each driver at most once.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=3
	// +kubebuilder:default={modern_ebpf, ebpf, kmod}
	Preference []Driver `json:"preference,omitempty"`

	// overrides replace the preference on the nodes they match; the first matching override wins.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Overrides []DriverOverride `json:"overrides,omitempty"`
}

// DriverOverride gives matching nodes their own preference list.
type DriverOverride struct {
	// match says which nodes the override applies to; every field that is set must match.
	// +required
	Match OverrideMatch `json:"match"`

	// preference is the ordered list of allowed drivers on matching nodes. Each driver at most once.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=3
	Preference []Driver `json:"preference"`
}

// OverrideMatch selects nodes by the facts the agent measured there.
//
// +kubebuilder:validation:XValidation:rule="has(self.kernelRelease) || has(self.distro) || has(self.cloudProvider) || has(self.architecture)",message="match must set at least one of kernelRelease, distro, cloudProvider, architecture"
type OverrideMatch struct {
	// kernelRelease is a regular expression (RE2) matched against the kernel release, for example
	// `^5\.10\..*amzn2`. The API server cannot compile it; an expression that does not compile
	// makes the profile Ready=False with reason InvalidSpec.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	KernelRelease string `json:"kernelRelease,omitempty"`

	// distro lists os-release IDs (for example amzn, bottlerocket, cos, ubuntu, rhel, ol, talos).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9._-]+$`
	// +kubebuilder:validation:items:MaxLength=64
	Distro []string `json:"distro,omitempty"`

	// cloudProvider lists providers as read from node.spec.providerID (aws, gce, azure, ...).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9-]+$`
	// +kubebuilder:validation:items:MaxLength=64
	CloudProvider []string `json:"cloudProvider,omitempty"`

	// architecture lists machine architectures in GOARCH spelling (amd64, arm64).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:Enum=amd64;arm64;s390x;ppc64le;riscv64
	Architecture []string `json:"architecture,omitempty"`
}

// SelfTestSpec says what is proven on each node.
type SelfTestSpec struct {
	// checks are the self-test checks a node must pass, each at most once.
	// ExeUpperLayer is the drop-and-execute detection this product exists to prove.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=4
	// +kubebuilder:default={ExeUpperLayer, ExeLowerLayer}
	// +kubebuilder:validation:XValidation:rule="self.exists(c, c == 'ExeUpperLayer')",message="checks must include ExeUpperLayer: the drop-and-execute detection is what a verified node proves"
	Checks []CheckName `json:"checks,omitempty"`

	// timeout bounds each check: an event not seen within it fails the check (fail closed).
	// A positive Go duration such as 5s; at most 10m.
	// +optional
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('10m')",message="timeout must be a positive duration of at most 10m"
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// interval is how often a verified node is tested again. A positive Go duration, at least 1m.
	// +optional
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="interval must be a duration of at least 1m"
	Interval *metav1.Duration `json:"interval,omitempty"`
}

// RolloutSpec paces verification across nodes.
type RolloutSpec struct {
	// canary names nodes that must pass their self-test before any other node is started.
	// +optional
	Canary *CanarySpec `json:"canary,omitempty"`

	// maxUnavailable is how many nodes may be verifying (not yet Ready) at once after the canary:
	// a count of at least 1 or a percentage from 1% to 100% of the selected nodes (rounded up).
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self >= 1 : self.matches('^([1-9][0-9]?|100)%$')",message="maxUnavailable must be an integer of at least 1 or a percentage from 1% to 100%"
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`

	// pauseOnFailures pauses the rollout (no new node starts verifying) once this many nodes have
	// failed every allowed driver. 0 never pauses.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	PauseOnFailures int32 `json:"pauseOnFailures,omitempty"`
}

// CanarySpec chooses the canary nodes.
//
// +kubebuilder:validation:XValidation:rule="has(self.nodeSelector) || has(self.count)",message="canary must set nodeSelector or count"
type CanarySpec struct {
	// nodeSelector selects canary nodes among the selected nodes.
	// +optional
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, (e.operator in ['In', 'NotIn'] && has(e.values) && size(e.values) > 0) || (e.operator in ['Exists', 'DoesNotExist'] && (!has(e.values) || size(e.values) == 0)))",message="each matchExpressions operator must be In or NotIn with values, or Exists or DoesNotExist without values"
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// count takes this many selected nodes, in name order, as canaries (after those matched by nodeSelector).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	Count *int32 `json:"count,omitempty"`
}

// EnforcementSpec says what happens to nodes that are not verified.
type EnforcementSpec struct {
	// taint keeps the NoSchedule taint security.driverpilot.io/unverified on selected nodes
	// until their RuntimeSecurityReady condition is True.
	// +optional
	Taint bool `json:"taint,omitempty"`
}

// SecurityProfileStatus is the roll-up of the NodeSensors of this profile.
type SecurityProfileStatus struct {
	// observedGeneration is the generation of the spec this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready (every selected node verified; False with reason InvalidSpec for a spec the
	// API server could not check), Progressing (nodes still verifying; False with reason
	// RolloutPaused, CanaryFailed or CanarySilent when the rollout stopped), Degraded (nodes
	// failed) and Brownout (most agents stopped reporting together: nodes Unknown, no taints added).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// nodes counts the selected nodes by state.
	// +optional
	Nodes NodeCounts `json:"nodes,omitempty"`

	// canaries are the canary nodes, chosen once: every node spec.rollout.canary.nodeSelector
	// matches, and count more in name order. A node that joins later does not take a count slot
	// from a recorded canary; a canary that leaves the selection is replaced.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=5000
	// +kubebuilder:validation:items:MaxLength=253
	Canaries []string `json:"canaries,omitempty"`

	// drivers counts verified nodes per driver.
	// +optional
	// +listType=map
	// +listMapKey=driver
	Drivers []DriverCount `json:"drivers,omitempty"`

	// fleet counts the groups of nodes (kernel release, architecture, distro, sensor) and the
	// drivers they learned to skip; the matrix itself is one FleetGroup object per group
	// (kubectl get fleetgroups -l security.driverpilot.io/profile=<name>).
	// +optional
	Fleet *FleetCounts `json:"fleet,omitempty"`
}

// FleetCounts summarise what a profile's nodes learned from each other.
type FleetCounts struct {
	// groups is the number of groups of nodes with known facts.
	Groups int32 `json:"groups"`
	// learnedFailures is the number of (group, driver) pairs whose failure is a rule for the group.
	LearnedFailures int32 `json:"learnedFailures"`
	// awaitingAgreement is the number of (group, driver) pairs that failed on one node of a large
	// group and wait for a second node to agree.
	AwaitingAgreement int32 `json:"awaitingAgreement"`
}

// NodeCounts counts nodes by verification state.
type NodeCounts struct {
	// selected is the number of nodes the profile selects.
	Selected int32 `json:"selected"`
	// verified is the number of nodes whose self-test passed with their current driver.
	Verified int32 `json:"verified"`
	// failed is the number of nodes with no driver left to try (NoSupportedDriver).
	Failed int32 `json:"failed"`
	// pending is the number of nodes waiting for a probe, a decision or a self-test.
	Pending int32 `json:"pending"`
	// upToDate is the number of verified nodes proven under the current spec (observedGeneration):
	// the sensor, the checks and a driver it allows. The others keep their earlier proof until
	// the rollout re-verifies them.
	UpToDate int32 `json:"upToDate"`
}

// DriverCount is the number of verified nodes running one driver.
type DriverCount struct {
	// driver is the driver.
	Driver Driver `json:"driver"`
	// nodes is the number of verified nodes running it.
	Nodes int32 `json:"nodes"`
}

// SecurityProfile declares the runtime-security protection of a set of nodes.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=secprof,categories=driverpilot
// +kubebuilder:printcolumn:name="Sensor",type=string,JSONPath=`.spec.sensor.kind`
// +kubebuilder:printcolumn:name="Selected",type=integer,JSONPath=`.status.nodes.selected`
// +kubebuilder:printcolumn:name="Verified",type=integer,JSONPath=`.status.nodes.verified`
// +kubebuilder:printcolumn:name="Up-to-date",type=integer,JSONPath=`.status.nodes.upToDate`
// +kubebuilder:printcolumn:name="Failed",type=integer,JSONPath=`.status.nodes.failed`
// +kubebuilder:printcolumn:name="Groups",type=integer,JSONPath=`.status.fleet.groups`,priority=1
// +kubebuilder:printcolumn:name="Learned",type=integer,JSONPath=`.status.fleet.learnedFailures`,priority=1
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SecurityProfile struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired protection.
	// +optional
	// +kubebuilder:default={}
	Spec SecurityProfileSpec `json:"spec,omitempty"`

	// status is the observed state, written by the manager.
	// +optional
	Status SecurityProfileStatus `json:"status,omitempty"`
}

// SecurityProfileList is a list of SecurityProfiles.
//
// +kubebuilder:object:root=true
type SecurityProfileList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SecurityProfile `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SecurityProfile{}, &SecurityProfileList{})
}
