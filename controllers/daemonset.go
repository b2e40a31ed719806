package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

// AgentConfig describes the agent DaemonSet the manager deploys for each profile.
type AgentConfig struct {
	// Namespace is where the DaemonSets run (the manager's namespace).
	Namespace string
	// Image is the agent image (the driverpilot image).
	Image string
	// ServiceAccount is the agents' service account.
	ServiceAccount string
}

// templateHashAnnotation holds a template hash: on the DaemonSet, of the whole pod template as
// last written (an unchanged profile costs no write); on the pod template, and so on each agent
// pod, of what the pod runs (podTemplateHash), which says whether the pod is outdated.
// AgentAppLabel and AgentAppName label every agent pod; the manager caches only pods with it in
// its namespace.
const (
	AgentAppLabel = "app.kubernetes.io/name"
	AgentAppName  = "driverpilot-agent"
)

const templateHashAnnotation = "security.driverpilot.io/template-hash"

func templateHash(t corev1.PodTemplateSpec) string {
	data, _ := json.Marshal(t)
	h := fnv.New64a()
	h.Write(data)
	return strconv.FormatUint(h.Sum64(), 16)
}

// podTemplateHash hashes what an agent pod runs: the template without its node affinity (which
// decides only where pods run: a new nodeSelector replaces no pod on a node it still selects)
// and without the hash annotation itself.
func podTemplateHash(t corev1.PodTemplateSpec) string {
	t = *t.DeepCopy()
	t.Spec.Affinity = nil
	delete(t.Annotations, templateHashAnnotation)
	return templateHash(t)
}

func agentDaemonSetName(profile *v1alpha1.SecurityProfile) string {
	return "driverpilot-agent-" + profile.Name
}

// ensureAgentDaemonSet creates or updates the profile's agent DaemonSet.
func (r *SecurityProfileReconciler) ensureAgentDaemonSet(ctx context.Context, profile *v1alpha1.SecurityProfile) error {
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: agentDaemonSetName(profile), Namespace: r.Agent.Namespace}}
	_, err := controllerutil.CreateOrUpdate(ctx, r.Client, ds, func() error {
		want := agentDaemonSet(profile, r.Agent)
		ds.Labels = want.Labels
		if ds.CreationTimestamp.IsZero() {
			ds.Spec.Selector = want.Spec.Selector // immutable after creation
		}
		// The API server fills defaults into the stored template, so compare what we asked for
		// (by hash) rather than the objects: an unchanged profile costs no write.
		// Someone else's edit of the spec (a hand-edited nodeSelector) moves its generation past
		// the one this manager wrote: the template is written again, as after a restart.
		hash := templateHash(want.Spec.Template)
		if ds.Annotations[templateHashAnnotation] != hash || !r.dsWritten.current(ds) {
			if ds.Annotations == nil {
				ds.Annotations = map[string]string{}
			}
			ds.Annotations[templateHashAnnotation] = hash
			ds.Spec.Template = want.Spec.Template
		}
		// OnDelete also on a DaemonSet an older manager wrote with RollingUpdate and the same
		// template: the manager replaces outdated pods itself.
		ds.Spec.UpdateStrategy = want.Spec.UpdateStrategy
		return controllerutil.SetControllerReference(profile, ds, r.Scheme)
	})
	if err != nil {
		return fmt.Errorf("agent daemonset: %w", err)
	}
	r.dsWritten.wrote(ds)
	return nil
}

// generations remember, per DaemonSet name, the UID and generation as this manager last wrote
// or found it in its desired state.
type generations struct{ m sync.Map }

type written struct {
	uid        types.UID
	generation int64
}

func (g *generations) wrote(ds *appsv1.DaemonSet) {
	g.m.Store(ds.Name, written{uid: ds.UID, generation: ds.Generation})
}

func (g *generations) current(ds *appsv1.DaemonSet) bool {
	w, ok := g.m.Load(ds.Name)
	return ok && w.(written) == written{uid: ds.UID, generation: ds.Generation}
}

func (g *generations) forget(name string) { g.m.Delete(name) }

// agentDaemonSet renders the agent DaemonSet: one pod per selected node, tolerating every taint
// (it must run on the nodes it is about to verify, tainted or not), with the host's root, /proc
// and /sys read-only and only the capabilities the probe, the sensor and the self-test use.
func agentDaemonSet(profile *v1alpha1.SecurityProfile, cfg AgentConfig) *appsv1.DaemonSet {
	labels := map[string]string{
		AgentAppLabel:                  AgentAppName,
		"app.kubernetes.io/managed-by": "driverpilot",
		ProfileLabel:                   profile.Name,
	}
	hostPath := func(name, path string) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path}}}
	}
	readOnly := func(name, path string) corev1.VolumeMount {
		return corev1.VolumeMount{Name: name, MountPath: path, ReadOnly: true, MountPropagation: ptr.To(corev1.MountPropagationHostToContainer)}
	}
	container := corev1.Container{
		Name:  "agent",
		Image: cfg.Image,
		Args:  []string{"agent", "--node-name=$(NODE_NAME)", "--host-root=/host", "--profile=" + profile.Name},
		// The node it serves; its pod, which holds the node's heartbeat Lease in the pod's
		// namespace (and which a Falco agent deletes to restart Falco).
		Env: []corev1.EnvVar{fieldEnv("NODE_NAME", "spec.nodeName"), fieldEnv("POD_NAME", "metadata.name"), fieldEnv("POD_NAMESPACE", "metadata.namespace")},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr.To[int64](0),
			Privileged:               ptr.To(false),
			AllowPrivilegeEscalation: ptr.To(false),
			// Each capability and why it is there: AgentCapabilities.
			Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: AgentCapabilityNames()},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined},
			// The runtimes' default AppArmor profile denies mount, which the self-test's private
			// overlay needs (Ubuntu and COS nodes run AppArmor).
			AppArmorProfile: &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined},
		},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("20m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
		},
		VolumeMounts: []corev1.VolumeMount{
			readOnly("host-root", "/host"),
			readOnly("host-proc", "/host/proc"),
			readOnly("host-sys", "/host/sys"),
		},
	}
	spec := corev1.PodSpec{
		ServiceAccountName: cfg.ServiceAccount,
		Containers:         []corev1.Container{container},
		Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		PriorityClassName:  "system-node-critical",
		Volumes: []corev1.Volume{
			hostPath("host-root", "/"), hostPath("host-proc", "/proc"), hostPath("host-sys", "/sys"),
		},
	}
	if profile.Spec.Sensor.Kind == v1alpha1.SensorFalco {
		spec = falcoPodSpec(profile, cfg, spec)
	}
	if aff := nodeAffinity(profile.Spec.NodeSelector); aff != nil {
		spec.Affinity = &corev1.Affinity{NodeAffinity: aff}
	}
	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{CapabilitiesAnnotation: agentCapabilityReasons()}},
		Spec:       spec,
	}
	// Each pod says which template it runs, so the manager knows which pods are outdated.
	template.Annotations[templateHashAnnotation] = podTemplateHash(template)
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: appsv1.DaemonSetSpec{
			Selector: agentSelector(profile),
			Template: template,
			// Pacing is the manager's job, not the DaemonSet's: it replaces an outdated pod when
			// the node is not protected, or when the rollout lets a proven node re-verify
			// (canaries first, within maxUnavailable). The DaemonSet only creates missing pods.
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType},
		},
	}
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

// agentSelector selects the pods of a profile's agent DaemonSet.
func agentSelector(profile *v1alpha1.SecurityProfile) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{AgentAppLabel: AgentAppName, ProfileLabel: profile.Name}}
}

// nodeAffinity translates a label selector into required node affinity.
func nodeAffinity(sel *metav1.LabelSelector) *corev1.NodeAffinity {
	if sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0) {
		return nil
	}
	var reqs []corev1.NodeSelectorRequirement
	for k, v := range sel.MatchLabels {
		reqs = append(reqs, corev1.NodeSelectorRequirement{Key: k, Operator: corev1.NodeSelectorOpIn, Values: []string{v}})
	}
	for _, e := range sel.MatchExpressions {
		reqs = append(reqs, corev1.NodeSelectorRequirement{Key: e.Key, Operator: corev1.NodeSelectorOperator(e.Operator), Values: e.Values})
	}
	sortRequirements(reqs)
	return &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: reqs}},
	}}
}
