package controllers

import (
	corev1 "k8s.io/api/core/v1"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

// falcoPodSpec turns the agent pod of a Falco profile into Falco plus the agent as a sidecar.
// Being built (issue: Falco as the sensor); until then the agent pod is unchanged.
func falcoPodSpec(_ *v1alpha1.SecurityProfile, _ AgentConfig, agentPod corev1.PodSpec) corev1.PodSpec {
	return agentPod
}
