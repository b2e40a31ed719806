package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FleetGroupSpec identifies one group of a profile's nodes: the facts that decide how a driver
// behaves. Every node of a group runs the same kernel build with the same sensor.
type FleetGroupSpec struct {
	// profile is the SecurityProfile whose nodes form the group.
	// +kubebuilder:validation:MaxLength=253
	Profile string `json:"profile"`
	// kernelRelease is the kernel release as uname prints it.
	// +kubebuilder:validation:MaxLength=256
	KernelRelease string `json:"kernelRelease"`
	// architecture is the machine architecture in GOARCH spelling.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Architecture string `json:"architecture,omitempty"`
	// distro is os-release's ID and VERSION_ID, for example "amzn 2".
	// +optional
	// +kubebuilder:validation:MaxLength=129
	Distro string `json:"distro,omitempty"`
	// sensor is the sensor kind and version, for example "Falco 0.38.1" or "Builtin 0.2.0".
	// +optional
	// +kubebuilder:validation:MaxLength=600
	Sensor string `json:"sensor,omitempty"`
}

// FleetVerdict is what a group learned about a driver.
// +kubebuilder:validation:Enum=Works;Fails;AwaitingAgreement;Mixed;Untested
type FleetVerdict string

const (
	// FleetWorks: the driver passed its self-test on a node of the group and failed on none for
	// a reason of the kernel. The group's other nodes rank it as proven.
	FleetWorks FleetVerdict = "Works"
	// FleetFails: the driver failed on enough nodes of the group for a reason of the kernel, and
	// passed on none: the group's other nodes skip it.
	FleetFails FleetVerdict = "Fails"
	// FleetAwaitingAgreement: the driver failed for a reason of the kernel on one node of a large
	// group; one more node tries it (one node of the group at a time tries it meanwhile).
	FleetAwaitingAgreement FleetVerdict = "AwaitingAgreement"
	// FleetMixed: the driver passed on some nodes of the group and failed for a reason of the
	// kernel on others. The passes overturn the failures: nobody skips it.
	FleetMixed FleetVerdict = "Mixed"
	// FleetUntested: only failures that say nothing about the kernel (a timeout, a node-local
	// error), or nothing at all.
	FleetUntested FleetVerdict = "Untested"
)

// FleetDriverStatus is one cell of the compatibility matrix: one driver on one group.
type FleetDriverStatus struct {
	// driver is the driver.
	Driver Driver `json:"driver"`
	// verdict is what the group learned: Works, Fails, AwaitingAgreement, Mixed or Untested.
	Verdict FleetVerdict `json:"verdict"`
	// passed is the number of the group's nodes verified with this driver now.
	Passed int32 `json:"passed"`
	// failed is the number of the group's nodes where it failed for a reason of the kernel.
	Failed int32 `json:"failed"`
	// otherFailures is the number of the group's nodes where it failed for a reason that says
	// nothing about the kernel (a timeout, a node-local error): never shared.
	// +optional
	OtherFailures int32 `json:"otherFailures,omitempty"`
	// learnedFrom names the node and attempt of the first failure of the kernel's, or of the
	// first pass, the verdict rests on.
	// +optional
	// +kubebuilder:validation:MaxLength=300
	LearnedFrom string `json:"learnedFrom,omitempty"`
	// reason is the self-test's reason of that failure.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Reason string `json:"reason,omitempty"`
	// summary is the cell as `kubectl get fleetgroups` shows it, for example "Fails 2/50".
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Summary string `json:"summary,omitempty"`
}

// FleetGroupStatus is the group's row of the compatibility matrix.
type FleetGroupStatus struct {
	// nodes is the number of the profile's nodes in the group.
	Nodes int32 `json:"nodes"`
	// verified is the number of them verified now.
	Verified int32 `json:"verified"`
	// firstNode is the group's first node to verify (its canary), empty until one did.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	FirstNode string `json:"firstNode,omitempty"`
	// drivers is what the group learned about each driver.
	// +optional
	// +listType=map
	// +listMapKey=driver
	// +kubebuilder:validation:MaxItems=3
	Drivers []FleetDriverStatus `json:"drivers,omitempty"`
}

// FleetGroup is one row of a profile's fleet compatibility matrix: a group of its nodes that
// share kernel release, architecture, distro and sensor, and what their self-tests proved about
// each driver. Written by the manager from the NodeSensors on every pass (deleting one only makes
// the manager write it again); `kubectl get fleetgroups` shows the matrix.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=fgroup,categories=driverpilot
// +kubebuilder:printcolumn:name="Profile",type=string,JSONPath=`.spec.profile`
// +kubebuilder:printcolumn:name="Kernel",type=string,JSONPath=`.spec.kernelRelease`
// +kubebuilder:printcolumn:name="Arch",type=string,JSONPath=`.spec.architecture`
// +kubebuilder:printcolumn:name="Distro",type=string,JSONPath=`.spec.distro`
// +kubebuilder:printcolumn:name="Sensor",type=string,JSONPath=`.spec.sensor`
// +kubebuilder:printcolumn:name="Nodes",type=integer,JSONPath=`.status.nodes`
// +kubebuilder:printcolumn:name="Verified",type=integer,JSONPath=`.status.verified`
// +kubebuilder:printcolumn:name="modern_ebpf",type=string,JSONPath=`.status.drivers[?(@.driver=="modern_ebpf")].summary`
// +kubebuilder:printcolumn:name="ebpf",type=string,JSONPath=`.status.drivers[?(@.driver=="ebpf")].summary`
// +kubebuilder:printcolumn:name="kmod",type=string,JSONPath=`.status.drivers[?(@.driver=="kmod")].summary`
// +kubebuilder:printcolumn:name="First",type=string,JSONPath=`.status.firstNode`,priority=1
type FleetGroup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec identifies the group.
	Spec FleetGroupSpec `json:"spec"`

	// status is what the group's nodes proved.
	// +optional
	Status FleetGroupStatus `json:"status,omitempty"`
}

// FleetGroupList is a list of FleetGroups.
//
// +kubebuilder:object:root=true
type FleetGroupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []FleetGroup `json:"items"`
}

func init() {
	SchemeBuilder.Register(&FleetGroup{}, &FleetGroupList{})
}
