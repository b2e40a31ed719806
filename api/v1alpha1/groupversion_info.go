// Package v1alpha1 holds the DriverPilot API: SecurityProfile (the desired protection) and
// NodeSensor (one per node: the facts measured there, the driver decision and the self-test verdict).
//
// +kubebuilder:object:generate=true
// +groupName=security.driverpilot.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the API group and version of these types.
	GroupVersion = schema.GroupVersion{Group: "security.driverpilot.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types with a runtime scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this group-version to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
