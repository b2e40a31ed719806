package v1alpha1_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// object builds an unstructured object from YAML so tests can send what a typed client would refuse.
func object(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatalf("bad test YAML: %v\n%s", err, doc)
	}
	return u
}

func profile(t *testing.T, name, spec string) *unstructured.Unstructured {
	doc := "apiVersion: security.driverpilot.io/v1alpha1\nkind: SecurityProfile\nmetadata:\n  name: " + name + "\nspec:\n" + indent(spec)
	return object(t, doc)
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return strings.Join(lines, "\n") + "\n"
}

func TestSamplesAreAccepted(t *testing.T) {
	testenv.Require(t)
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "config", "samples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var samples int
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			samples++
			u := object(t, doc)
			if err := env.Client.Create(context.Background(), u); err != nil {
				t.Errorf("sample %s (%s) refused: %v", filepath.Base(f), u.GetName(), err)
				continue
			}
			t.Cleanup(func() { _ = env.Client.Delete(context.Background(), u) })
		}
	}
	if samples < 2 {
		t.Fatalf("found %d samples in config/samples, want at least 2", samples)
	}
}

// TestDefaults checks that an empty spec gets the documented defaults from the API server.
func TestDefaults(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	p := &v1alpha1.SecurityProfile{}
	p.Name = "defaults"
	if err := env.Client.Create(ctx, p); err != nil {
		t.Fatalf("create empty profile: %v", err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, p) })
	got := &v1alpha1.SecurityProfile{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(p), got); err != nil {
		t.Fatal(err)
	}
	s := got.Spec
	if s.Sensor.Kind != v1alpha1.SensorBuiltin {
		t.Errorf("sensor.kind = %q, want Builtin", s.Sensor.Kind)
	}
	if want := []v1alpha1.Driver{"modern_ebpf", "ebpf", "kmod"}; !equal(s.Drivers.Preference, want) {
		t.Errorf("drivers.preference = %v, want %v", s.Drivers.Preference, want)
	}
	if want := []v1alpha1.CheckName{"ExeUpperLayer", "ExeLowerLayer"}; !equal(s.SelfTest.Checks, want) {
		t.Errorf("selfTest.checks = %v, want %v", s.SelfTest.Checks, want)
	}
	if s.SelfTest.Timeout == nil || s.SelfTest.Timeout.Duration.String() != "10s" {
		t.Errorf("selfTest.timeout = %v, want 10s", s.SelfTest.Timeout)
	}
	if s.SelfTest.Interval == nil || s.SelfTest.Interval.Duration.String() != "24h0m0s" {
		t.Errorf("selfTest.interval = %v, want 24h", s.SelfTest.Interval)
	}
	if s.Rollout.MaxUnavailable == nil || s.Rollout.MaxUnavailable.IntValue() != 1 {
		t.Errorf("rollout.maxUnavailable = %v, want 1", s.Rollout.MaxUnavailable)
	}
	if s.Fleet.Learning != v1alpha1.FleetLearningShared {
		t.Errorf("fleet.learning = %q, want Shared", s.Fleet.Learning)
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestInvalidObjectsAreRefused sends objects a user could write by mistake; each must be refused
// as invalid, and the message must name the field to fix.
func TestInvalidObjectsAreRefused(t *testing.T) {
	testenv.Require(t)
	cases := []struct {
		name  string
		spec  string // SecurityProfile spec, unless obj is set
		obj   string // a whole object
		field string // must appear in the message
		hint  string // and so must this
	}{
		{name: "unknown driver", spec: "drivers:\n  preference: [modern_ebpf, ebpf2]", field: "spec.drivers.preference[1]", hint: `"ebpf2"`},
		{name: "duplicate driver", spec: "drivers:\n  preference: [kmod, ebpf, kmod]", field: "spec.drivers.preference[2]", hint: "Duplicate value"},
		{name: "empty preference", spec: "drivers:\n  preference: []", field: "spec.drivers.preference", hint: "at least 1"},
		{name: "override matching nothing", spec: "drivers:\n  overrides:\n  - match: {}\n    preference: [kmod]", field: "spec.drivers.overrides[0].match", hint: "at least one of kernelRelease"},
		{name: "override with unknown driver", spec: "drivers:\n  overrides:\n  - match: {distro: [cos]}\n    preference: [falco]", field: "spec.drivers.overrides[0].preference[0]", hint: `"falco"`},
		{name: "override duplicate driver", spec: "drivers:\n  overrides:\n  - match: {distro: [cos]}\n    preference: [ebpf, ebpf]", field: "spec.drivers.overrides[0].preference[1]", hint: "Duplicate value"},
		{name: "override unknown architecture", spec: "drivers:\n  overrides:\n  - match: {architecture: [x86_64]}\n    preference: [kmod]", field: "spec.drivers.overrides[0].match.architecture[0]", hint: `"x86_64"`},
		{name: "maxUnavailable zero", spec: "rollout:\n  maxUnavailable: 0", field: "spec.rollout.maxUnavailable", hint: "at least 1"},
		{name: "maxUnavailable negative", spec: "rollout:\n  maxUnavailable: -3", field: "spec.rollout.maxUnavailable", hint: "at least 1"},
		{name: "maxUnavailable 0%", spec: "rollout:\n  maxUnavailable: 0%", field: "spec.rollout.maxUnavailable", hint: "1% to 100%"},
		{name: "maxUnavailable 150%", spec: "rollout:\n  maxUnavailable: 150%", field: "spec.rollout.maxUnavailable", hint: "1% to 100%"},
		{name: "maxUnavailable words", spec: "rollout:\n  maxUnavailable: half", field: "spec.rollout.maxUnavailable", hint: "1% to 100%"},
		{name: "pauseOnFailures negative", spec: "rollout:\n  pauseOnFailures: -1", field: "spec.rollout.pauseOnFailures", hint: "greater than or equal to 0"},
		{name: "canary choosing nothing", spec: "rollout:\n  canary: {}", field: "spec.rollout.canary", hint: "nodeSelector or count"},
		{name: "canary count zero", spec: "rollout:\n  canary: {count: 0}", field: "spec.rollout.canary.count", hint: "greater than or equal to 1"},
		{name: "unknown fleet learning", spec: "fleet:\n  learning: Sometimes", field: "spec.fleet.learning", hint: `"Shared", "Off"`},
		{name: "timeout zero", spec: "selfTest:\n  timeout: 0s", field: "spec.selfTest.timeout", hint: "positive duration"},
		{name: "timeout negative", spec: "selfTest:\n  timeout: -5s", field: "spec.selfTest.timeout", hint: "should match"},
		{name: "timeout not a duration", spec: "selfTest:\n  timeout: soon", field: "spec.selfTest.timeout", hint: "should match"},
		{name: "interval zero", spec: "selfTest:\n  interval: 0s", field: "spec.selfTest.interval", hint: "at least 1m"},
		{name: "interval shorter than timeout", spec: "selfTest:\n  timeout: 5m\n  interval: 2m", field: "spec", hint: "interval must be longer than selfTest.timeout"},
		{name: "unknown check", spec: "selfTest:\n  checks: [ExeUpperLayer, ExeFromPipe]", field: "spec.selfTest.checks[1]", hint: `"ExeFromPipe"`},
		{name: "duplicate check", spec: "selfTest:\n  checks: [ExeUpperLayer, ExeUpperLayer]", field: "spec.selfTest.checks[1]", hint: "Duplicate value"},
		{name: "checks without ExeUpperLayer", spec: "selfTest:\n  checks: [ExeLowerLayer, ExeFromMemfd]", field: "spec.selfTest.checks", hint: "must include ExeUpperLayer"},
		{name: "falco without image", spec: "sensor:\n  kind: Falco", field: "spec.sensor", hint: "sensor.image is required"},
		{name: "unknown sensor kind", spec: "sensor:\n  kind: Tetragon", field: "spec.sensor.kind", hint: `"Tetragon"`},
		{name: "falco version not semver", spec: "sensor:\n  kind: Falco\n  image: falco:latest\n  falcoVersion: latest", field: "spec.sensor.falcoVersion", hint: "should match"},
		{name: "bad node selector operator", spec: "nodeSelector:\n  matchExpressions:\n  - {key: a, operator: Near}", field: "spec.nodeSelector", hint: "must be In or NotIn with values"},
		{name: "canary selector In without values", spec: "rollout:\n  canary:\n    nodeSelector:\n      matchExpressions:\n      - {key: a, operator: In}", field: "spec.rollout.canary.nodeSelector", hint: "must be In or NotIn with values"},
		{
			name:  "node sensor with unknown driver",
			obj:   "apiVersion: security.driverpilot.io/v1alpha1\nkind: NodeSensor\nmetadata: {name: node-a}\nspec: {profile: default, driver: ebpf_next}",
			field: "spec.driver", hint: `"ebpf_next"`,
		},
		{
			name:  "node sensor without profile",
			obj:   "apiVersion: security.driverpilot.io/v1alpha1\nkind: NodeSensor\nmetadata: {name: node-b}\nspec: {driver: kmod}",
			field: "spec.profile", hint: "Required value",
		},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var u *unstructured.Unstructured
			if tc.obj != "" {
				u = object(t, tc.obj)
			} else {
				u = profile(t, "invalid-"+strings.ReplaceAll(strings.ReplaceAll(tc.name, " ", "-"), "%", "pct"), tc.spec)
			}
			err := env.Client.Create(context.Background(), u)
			if err == nil {
				_ = env.Client.Delete(context.Background(), u)
				t.Fatalf("case %d: object was accepted, want it refused for %s", i, tc.field)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("error is not Invalid: %v", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.field+":") {
				t.Errorf("message does not name field %q:\n%s", tc.field, msg)
			}
			if !strings.Contains(msg, tc.hint) {
				t.Errorf("message does not say %q:\n%s", tc.hint, msg)
			}
		})
	}
}

// TestAgentStringsAreBounded writes what a hostile or broken agent could: every string it
// writes has a bound, and none is longer than the field the manager copies it into.
func TestAgentStringsAreBounded(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	ns := &v1alpha1.NodeSensor{Spec: v1alpha1.NodeSensorSpec{Profile: "bounds"}}
	ns.Name = "bounds-a"
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, ns) })
	long := strings.Repeat("x", 300)
	u := v1alpha1.BoolFact{Answer: v1alpha1.AnswerUnknown}
	ns.Status.Probe = &v1alpha1.ProbeFacts{BTF: v1alpha1.BTFFacts{Vmlinux: u}, EBPF: v1alpha1.EBPFFacts{TPBTF: u, RawTracepoint: u, RingBuffer: u},
		Modules: v1alpha1.ModuleFacts{Supported: u, Disabled: u}, SecureBoot: u, Overlayfs: u}
	ns.Status.Probe.Kernel.Release.Value = long
	err := env.Client.Status().Update(ctx, ns)
	if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "status.probe.kernel.release.value") {
		t.Fatalf("a kernel release longer than FailedAttempt.kernelRelease (256) was not refused: %v", err)
	}
	// The agent clamps before it writes, so a long value costs its detail, not the report.
	ns.Status.Probe.Kernel.Release.Error = strings.Repeat("é", 5000)
	// The optional facts too (a Limited memlock's message names the limits and runs long).
	ns.Status.Probe.EBPF.Memlock = &v1alpha1.StringFact{Value: v1alpha1.MemlockLimited, Source: long, Error: strings.Repeat("e", 2000)}
	ns.Status.Probe.BoundingSet = &v1alpha1.StringFact{Value: long}
	ns.Status.SelfTest = &v1alpha1.SelfTestStatus{Driver: "ebpf", Attempt: 1, Result: v1alpha1.SelfTestFailed,
		Reason: long, BootID: long, Message: strings.Repeat("m", 9000),
		Checks: []v1alpha1.CheckResult{{Name: v1alpha1.CheckExeUpperLayer, Result: v1alpha1.SelfTestFailed, Observed: strings.Repeat("o", 5000)}}}
	ns.Status.Clamp()
	if err := env.Client.Status().Update(ctx, ns); err != nil {
		t.Fatalf("a clamped status was refused: %v", err)
	}
	if got := ns.Status.Probe.Kernel.Release.Value; len(got) != 256 || !strings.HasSuffix(got, "...") {
		t.Errorf("kernel release not clamped to 256: %d characters", len(got))
	}
}
