package controllers_test

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
)

// TestAgentCapabilitiesRendered: every container that runs the driverpilot image (the agent, and
// a Falco pod's init step) drops ALL and adds exactly controllers.AgentCapabilities, in order,
// unprivileged; the pod template names each with its reason. test/caps proves on the kernel that
// this set is enough and that none of it can go.
func TestAgentCapabilitiesRendered(t *testing.T) {
	var want []corev1.Capability
	for _, c := range controllers.AgentCapabilities {
		if c.Why == "" {
			t.Errorf("capability %s has no reason", c.Name)
		}
		if slices.Contains(want, c.Name) || strings.HasPrefix(string(c.Name), "CAP_") {
			t.Errorf("capability %s listed twice or spelt with CAP_", c.Name)
		}
		want = append(want, c.Name)
	}
	// A container that adds a capability missing from the host's bounding set cannot start
	// (issue 10): SYS_RESOURCE is such a one and must stay out.
	if slices.Contains(want, "SYS_RESOURCE") {
		t.Errorf("the agent adds SYS_RESOURCE: %v", want)
	}
	builtin := &v1alpha1.SecurityProfile{ObjectMeta: metav1.ObjectMeta{Name: "builtin"}}
	for name, p := range map[string]*v1alpha1.SecurityProfile{
		"builtin":           builtin,
		"falco":             falcoProfile("0.42.1"),
		"falco-modern-only": falcoProfile("0.42.1", v1alpha1.DriverModernEBPF),
	} {
		t.Run(name, func(t *testing.T) {
			tmpl := controllers.AgentPodTemplate(p, testAgentConfig)
			seen := 0
			for _, c := range append(tmpl.Spec.InitContainers, tmpl.Spec.Containers...) {
				if c.Image != testAgentConfig.Image {
					continue
				}
				seen++
				sc := c.SecurityContext
				if sc == nil || sc.Capabilities == nil {
					t.Fatalf("container %s has no capabilities", c.Name)
				}
				if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(sc.Capabilities.Add, want) {
					t.Errorf("container %s: drop %v add %v, want drop [ALL] add %v", c.Name, sc.Capabilities.Drop, sc.Capabilities.Add, want)
				}
				if sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
					t.Errorf("container %s is privileged or may escalate: %+v", c.Name, sc)
				}
			}
			if seen == 0 {
				t.Fatal("no container runs the driverpilot image")
			}
			notes := tmpl.Annotations[controllers.CapabilitiesAnnotation]
			for _, c := range controllers.AgentCapabilities {
				if !strings.Contains(notes, string(c.Name)+": "+c.Why) {
					t.Errorf("annotation %s does not give %s with its reason: %q", controllers.CapabilitiesAnnotation, c.Name, notes)
				}
			}
		})
	}
}
