package controllers_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/driverpilot/driverpilot/agent/falco"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/falco")

var testAgentConfig = controllers.AgentConfig{Namespace: "driverpilot-system", Image: "driverpilot:test", ServiceAccount: "driverpilot-agent"}

func falcoProfile(version string, preference ...v1alpha1.Driver) *v1alpha1.SecurityProfile {
	return &v1alpha1.SecurityProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "falco"},
		Spec: v1alpha1.SecurityProfileSpec{
			Sensor:  v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, Image: "docker.io/falcosecurity/falco:" + version},
			Drivers: v1alpha1.DriverPolicy{Preference: preference},
		},
	}
}

// TestFalcoPodTemplateGolden renders the agent pod of a Falco profile for each driver and each
// Falco version that matters (0.38.1: first with config.d; 0.42.1: ebpf deprecated-to-be;
// 0.44.0: no ebpf). Regenerate with `go test ./controllers -run FalcoPodTemplateGolden -update`.
func TestFalcoPodTemplateGolden(t *testing.T) {
	sets := map[string][]v1alpha1.Driver{
		"modern_ebpf": {v1alpha1.DriverModernEBPF},
		"ebpf":        {v1alpha1.DriverEBPF},
		"kmod":        {v1alpha1.DriverKmod},
		"default":     nil,
	}
	for _, version := range []string{"0.38.1", "0.42.1", "0.44.0"} {
		for name, pref := range sets {
			t.Run(version+"-"+name, func(t *testing.T) {
				tmpl := controllers.AgentPodTemplate(falcoProfile(version, pref...), testAgentConfig)
				got, err := yaml.Marshal(tmpl)
				if err != nil {
					t.Fatal(err)
				}
				file := filepath.Join("testdata", "falco", version+"-"+name+".yaml")
				if *update {
					if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(file, got, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(file)
				if err != nil {
					t.Fatalf("%v (run with -update to create it)", err)
				}
				if string(got) != string(want) {
					t.Errorf("pod template differs from %s (run with -update if the change is intended):\n%s", file, got)
				}
				checkOneDriverSource(t, tmpl.Spec)
			})
		}
	}
}

// checkOneDriverSource checks that the init step, the driver loader, Falco and the agent all
// meet at the one file tree the init step writes, so they cannot disagree on the driver.
func checkOneDriverSource(t *testing.T, spec corev1.PodSpec) {
	t.Helper()
	containers := map[string]corev1.Container{}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		containers[c.Name] = c
	}
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
	}
	for _, c := range containers {
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				t.Errorf("container %s mounts undefined volume %s", c.Name, m.Name)
			}
		}
	}
	arg := func(c corev1.Container, prefix string) string {
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, prefix); ok {
				return v
			}
		}
		t.Errorf("container %s has no %s argument: %v", c.Name, prefix, c.Args)
		return ""
	}
	mountOf := func(c corev1.Container, path string) corev1.VolumeMount {
		for _, m := range c.VolumeMounts {
			if m.MountPath == path {
				return m
			}
		}
		t.Errorf("container %s mounts nothing at %s", c.Name, path)
		return corev1.VolumeMount{}
	}
	if names := []string{spec.InitContainers[0].Name, spec.Containers[0].Name, spec.Containers[1].Name}; fmt.Sprint(names) != "[falco-config falco agent]" {
		t.Fatalf("containers %v, want the init step first, then falco and agent", names)
	}
	step, falcoC, agent := containers["falco-config"], containers["falco"], containers["agent"]
	out := arg(step, "--output-dir=")
	written := mountOf(step, out)
	if written.ReadOnly || written.SubPath != "" {
		t.Errorf("init step cannot write its tree: %+v", written)
	}
	if read := mountOf(agent, arg(agent, "--falco-config-dir=")); read.Name != written.Name || !read.ReadOnly || read.SubPath != "" {
		t.Errorf("agent reads %+v, the init step writes %+v", read, written)
	}
	if cd := mountOf(falcoC, "/etc/falco/config.d"); cd.Name != written.Name || cd.SubPath != filepath.Dir(falco.EngineFile) {
		t.Errorf("Falco's config.d is %+v, not the init step's %s", cd, filepath.Dir(falco.EngineFile))
	}
	if r := mountOf(falcoC, "/etc/falco/rules.d/"+filepath.Base(falco.RulesFile)); r.Name != written.Name || r.SubPath != falco.RulesFile {
		t.Errorf("Falco's DriverPilot rules are %+v", r)
	}
	if loader, ok := containers["falco-driver-loader"]; ok {
		if m := mountOf(loader, "/etc/falcoctl"); m.Name != written.Name || m.SubPath != filepath.Dir(falco.FalcoctlFile) {
			t.Errorf("loader's falcoctl configuration is %+v", m)
		}
		if !slices.Contains(loader.Args, "--config=/etc/falcoctl/falcoctl.yaml") {
			t.Errorf("loader args %v do not read the init step's falcoctl.yaml", loader.Args)
		}
		if !strings.Contains(loader.Image, "/falco-driver-loader:") {
			t.Errorf("loader image %s", loader.Image)
		}
	}
	url := "http://" + arg(agent, "--falco-listen=") + falco.AlertsPath
	if !slices.Contains(falcoC.Args, "http_output.url="+url) || !slices.Contains(falcoC.Args, "json_output=true") {
		t.Errorf("Falco's args %v do not post JSON alerts to the agent at %s", falcoC.Args, url)
	}
}

// TestFalcoDaemonSetAccepted: the API server accepts the Falco DaemonSet the manager writes.
func TestFalcoDaemonSetAccepted(t *testing.T) {
	p := falcoProfile("0.42.1")
	p.Name = "falco-accepted"
	p.Spec.NodeSelector = selectorFor("falco-accepted")
	createProfile(t, p)
	eventually(t, 20*time.Second, "Falco DaemonSet", func() error {
		ds := &appsv1.DaemonSet{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: testAgentConfig.Namespace, Name: "driverpilot-agent-" + p.Name}, ds); err != nil {
			return err
		}
		var names []string
		for _, c := range append(ds.Spec.Template.Spec.InitContainers, ds.Spec.Template.Spec.Containers...) {
			names = append(names, c.Name)
		}
		if fmt.Sprint(names) != "[falco-config falco-driver-loader falco agent]" {
			return fmt.Errorf("containers %v", names)
		}
		return nil
	})
}

// TestFalco044WithOnlyEBPFEndsInNoSupportedDriver: Falco 0.44 has no ebpf driver, so a profile
// allowing only ebpf ends, on every node, in RuntimeSecurityReady=False NoSupportedDriver with
// the reason naming the Falco version, and no driver is ever assigned to test.
func TestFalco044WithOnlyEBPFEndsInNoSupportedDriver(t *testing.T) {
	createNodes(t, "falco044", "falco044-a")
	p := falcoProfile("0.44.0", v1alpha1.DriverEBPF)
	p.Name = "falco044"
	p.Spec.NodeSelector = selectorFor("falco044")
	startAgents(t, 10*time.Millisecond, always(v1alpha1.SelfTestPassed), "falco044-a")
	createProfile(t, p)
	eventually(t, 30*time.Second, "no supported driver", conditionIs(t, "falco044-a", corev1.ConditionFalse, controllers.ReasonNoSupportedDriver))
	if c := nodeCondition(t, "falco044-a"); !strings.Contains(c.Message, "Falco 0.44.0 has no legacy ebpf driver") {
		t.Errorf("condition message does not say why: %q", c.Message)
	}
	ns := &v1alpha1.NodeSensor{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "falco044-a"}, ns); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range ns.Spec.Reasons {
		found = found || (r.Driver == v1alpha1.DriverEBPF && r.Source == v1alpha1.ReasonSourceSensor && r.Rule == "falco-0.44-removed-ebpf")
	}
	if !found || ns.Spec.Driver != "" || len(ns.Spec.FailedAttempts) != 0 {
		t.Errorf("node sensor spec %+v: want no driver, no attempt tested, and the falco-0.44-removed-ebpf reason", ns.Spec)
	}
}
