package main

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

// groupLabelKey splits the nodes into -profiles label groups, one profile each.
const groupLabelKey = "bench-rollout.driverpilot.io/group"

// nodeLabels are node i's labels: every node is a bench node, and node i is in group i mod k.
func nodeLabels(i, k int) map[string]string {
	l := map[string]string{nodeLabelKey: "true"}
	if k > 1 {
		l[groupLabelKey] = groupName(i % k)
	}
	return l
}

func groupName(g int) string { return fmt.Sprintf("g%03d", g) }

// newProfiles are the bench's k profiles with the same rollout settings: one selecting every
// bench node, or one per label group.
func newProfiles(k int, maxUnavailable string, learning v1alpha1.FleetLearning) []*v1alpha1.SecurityProfile {
	mu := intstr.Parse(maxUnavailable)
	out := make([]*v1alpha1.SecurityProfile, k)
	for g := range out {
		name, sel := profileName, map[string]string{nodeLabelKey: "true"}
		if k > 1 {
			name = profileName + "-" + groupName(g)
			sel = map[string]string{nodeLabelKey: "true", groupLabelKey: groupName(g)}
		}
		out[g] = &v1alpha1.SecurityProfile{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1alpha1.SecurityProfileSpec{
				NodeSelector: &metav1.LabelSelector{MatchLabels: sel},
				Sensor:       v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin},
				Rollout:      v1alpha1.RolloutSpec{MaxUnavailable: &mu},
				Fleet:        v1alpha1.FleetSpec{Learning: learning},
			},
		}
	}
	return out
}
