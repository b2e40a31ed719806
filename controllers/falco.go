package controllers

import (
	"fmt"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	"github.com/driverpilot/driverpilot/agent/falco"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
	"github.com/driverpilot/driverpilot/internal/selection"
)

// Where the pieces of a Falco pod meet.
const (
	// falcoConfigDir is where the init step writes (falco.WriteConfig) and the agent reads.
	falcoConfigDir = "/etc/driverpilot/falco"
	// falcoHealthURL is Falco's webserver health endpoint on the pod's loopback.
	falcoHealthURL = "http://127.0.0.1:8765/healthz"
)

// AgentPodTemplate is the pod template of the profile's agent DaemonSet, as the manager deploys it.
func AgentPodTemplate(profile *v1alpha1.SecurityProfile, cfg AgentConfig) corev1.PodTemplateSpec {
	return agentDaemonSet(profile, cfg).Spec.Template
}

// falcoPodSpec turns the agent pod of a Falco profile into the user's Falco with the driver
// DriverPilot chose for the node, and the agent as its sidecar. The template is the same on
// every node; the driver is not in it. The init step `driverpilot falco-config` waits for this
// node's decision and writes it once into a shared volume: Falco's config.d (engine.kind),
// falcoctl's driver configuration (read by the driver loader, the second init step) and
// DriverPilot's rules file. The agent reads the same file to check that Falco runs with the
// driver it tests, and deletes its own pod to rerun both init steps when the decision changes.
// Privileges and host mounts follow the Falco Helm chart for the drivers the profile allows.
func falcoPodSpec(profile *v1alpha1.SecurityProfile, _ AgentConfig, agentPod corev1.PodSpec) corev1.PodSpec {
	image := profile.Spec.Sensor.Image
	var version *kernelversion.Version
	if v, ok := selection.FalcoVersion(profile.Spec.Sensor); ok {
		version = &v
	}
	drivers := allowedDrivers(profile.Spec.Drivers, version)
	kmod := slices.Contains(drivers, v1alpha1.DriverKmod)
	loader := kmod || slices.Contains(drivers, v1alpha1.DriverEBPF)

	hostPath := func(name, p string) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: p}}}
	}
	emptyDir := func(name string) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
	}
	mount := func(name, p string, readOnly bool) corev1.VolumeMount {
		return corev1.VolumeMount{Name: name, MountPath: p, ReadOnly: readOnly}
	}
	sub := func(name, p, subPath string) corev1.VolumeMount {
		return corev1.VolumeMount{Name: name, MountPath: p, SubPath: subPath, ReadOnly: true}
	}
	spec := agentPod
	spec.Volumes = append(slices.Clone(agentPod.Volumes),
		emptyDir("driverpilot-falco"), // the decision, written once by the init step
		emptyDir("root-falco"),        // /root/.falco: the driver the loader installs
		hostPath("boot", "/boot"), hostPath("lib-modules", "/lib/modules"),
		hostPath("usr", "/usr"), hostPath("etc", "/etc"),
	)
	hostMounts := []corev1.VolumeMount{
		mount("root-falco", "/root/.falco", false),
		mount("host-proc", "/host/proc", true),
		mount("boot", "/host/boot", true),
		mount("lib-modules", "/host/lib/modules", !loader),
		mount("usr", "/host/usr", true),
		mount("etc", "/host/etc", true),
	}
	if kmod {
		spec.Volumes = append(spec.Volumes, hostPath("dev", "/dev"), hostPath("sys-module", "/sys/module"))
	}

	agent := *agentPod.Containers[0].DeepCopy()
	configStep := agent.DeepCopy()
	configStep.Name = "falco-config"
	configStep.Args = []string{"falco-config", "--node-name=$(NODE_NAME)", "--host-root=/host", "--profile=" + profile.Name, "--output-dir=" + falcoConfigDir}
	configStep.VolumeMounts = append(configStep.VolumeMounts, mount("driverpilot-falco", falcoConfigDir, false))
	spec.InitContainers = []corev1.Container{*configStep}

	if loader {
		spec.InitContainers = append(spec.InitContainers, corev1.Container{
			Name:  "falco-driver-loader",
			Image: driverLoaderImage(image, version),
			// falcoctl directly, not the image's entrypoint: the entrypoint runs `falcoctl driver
			// config` with its own type list first; here the type comes from the init step's file.
			// It installs nothing for modern_ebpf.
			Command: []string{"/usr/bin/falcoctl"},
			Args:    []string{"driver", "install", "--config=/etc/falcoctl/falcoctl.yaml"},
			Env:     []corev1.EnvVar{{Name: "HOST_ROOT", Value: "/host"}},
			// The chart's loader is privileged for kmod (insmod) and builds need the host's trees.
			SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)},
			VolumeMounts: append(slices.Clone(hostMounts),
				corev1.VolumeMount{Name: "driverpilot-falco", MountPath: "/etc/falcoctl", SubPath: path.Dir(falco.FalcoctlFile)}),
		})
	}

	falcoMounts := append(slices.Clone(hostMounts),
		sub("driverpilot-falco", "/etc/falco/config.d", path.Dir(falco.EngineFile)),
		sub("driverpilot-falco", "/etc/falco/rules.d/"+path.Base(falco.RulesFile), falco.RulesFile),
	)
	for i := range falcoMounts {
		if falcoMounts[i].Name == "lib-modules" {
			falcoMounts[i].ReadOnly = true // only the loader writes there
		}
	}
	if kmod {
		falcoMounts = append(falcoMounts, mount("dev", "/host/dev", true), mount("sys-module", "/sys/module", false))
	}
	if slices.Contains(drivers, v1alpha1.DriverModernEBPF) || slices.Contains(drivers, v1alpha1.DriverEBPF) {
		// The chart mounts /sys/kernel for the eBPF drivers (BTF, tracing).
		spec.Volumes = append(spec.Volumes, hostPath("sys-kernel", "/sys/kernel"))
		falcoMounts = append(falcoMounts, mount("sys-kernel", "/sys/kernel", true))
	}
	falcoContainer := corev1.Container{
		Name:  "falco",
		Image: image,
		Args: []string{"/usr/bin/falco",
			"-o", "json_output=true",
			"-o", "json_include_output_property=true",
			"-o", "json_include_tags_property=true",
			"-o", "http_output.enabled=true",
			"-o", "http_output.url=http://" + falco.DefaultListen + falco.AlertsPath,
			"-o", "webserver.enabled=true",
		},
		Env: []corev1.EnvVar{
			{Name: "HOST_ROOT", Value: "/host"},
			fieldEnv("FALCO_HOSTNAME", "spec.nodeName"),
			fieldEnv("FALCO_K8S_NODE_NAME", "spec.nodeName"),
		},
		SecurityContext: falcoSecurityContext(loader),
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("512Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
		},
		VolumeMounts: falcoMounts,
	}

	agent.Args = append(agent.Args,
		"--falco-listen="+falco.DefaultListen,
		"--falco-config-dir="+falcoConfigDir,
		"--falco-health-url="+falcoHealthURL,
		"--falco-restart=delete-pod",
	)
	agent.VolumeMounts = append(agent.VolumeMounts, mount("driverpilot-falco", falcoConfigDir, true))
	spec.Containers = []corev1.Container{falcoContainer, agent}
	return spec
}

// falcoSecurityContext is the chart's: privileged when a kernel module or the legacy probe may be
// loaded, else Falco's documented least-privileged set for modern_ebpf (falco.org, "Capabilities"):
// BPF and PERFMON to load and attach its programs, SYS_PTRACE to read other processes' /proc
// entries (environ), and SYS_RESOURCE because libpman raises RLIMIT_MEMLOCK to unlimited on every
// kernel, not only before 5.11, and Falco exits when it cannot (libs userspace/libpman/src/
// configuration.c pman_init_state, falco#2626). Unlike the agent's, this set keeps SYS_RESOURCE:
// without it Falco's modern_ebpf fails wherever the container's hard RLIMIT_MEMLOCK is finite,
// that is nearly everywhere. On a host whose capability bounding set lacks SYS_RESOURCE this
// container cannot start, and no container can raise a finite hard limit: the agent's init step
// (which does not add SYS_RESOURCE) reports the host's bounding set, and the selection ranks
// modern_ebpf last there with that reason (no-sys-resource-ranks-falco-modern-ebpf-lower), so a
// profile that allows another driver tries it first, and a failed self-test says why.
func falcoSecurityContext(privileged bool) *corev1.SecurityContext {
	if privileged {
		return &corev1.SecurityContext{Privileged: ptr.To(true)}
	}
	return &corev1.SecurityContext{
		Capabilities:    &corev1.Capabilities{Add: []corev1.Capability{"BPF", "SYS_RESOURCE", "PERFMON", "SYS_PTRACE"}},
		AppArmorProfile: &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined},
	}
}

// allowedDrivers is every driver the profile may assign on some node (its preference and its
// overrides'), less those the Falco version does not have.
func allowedDrivers(p v1alpha1.DriverPolicy, version *kernelversion.Version) []v1alpha1.Driver {
	pref := p.Preference
	if len(pref) == 0 {
		pref = selection.DefaultPreference
	}
	all := slices.Clone(pref)
	for _, o := range p.Overrides {
		all = append(all, o.Preference...)
	}
	var out []v1alpha1.Driver
	for _, d := range v1alpha1.AllDrivers {
		if slices.Contains(all, d) && falco.Offers(version, d) == nil {
			out = append(out, d)
		}
	}
	return out
}

// driverLoaderImage is Falco's driver-loader image of the same release, in the same registry
// path (docker.io/falcosecurity/falco:0.42.1 -> docker.io/falcosecurity/falco-driver-loader:0.42.1).
// An image of another name is used as is: it must then carry falcoctl itself.
func driverLoaderImage(image string, version *kernelversion.Version) string {
	ref := image
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	repo, tag := ref, ""
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		repo, tag = ref[:i], ref[i+1:]
	}
	dir, name := path.Split(repo)
	switch name {
	case "falco", "falco-no-driver", "falco-distroless":
	default:
		return image
	}
	if version != nil {
		tag = version.String()
	}
	if tag == "" {
		return image
	}
	return fmt.Sprintf("%sfalco-driver-loader:%s", dir, tag)
}
