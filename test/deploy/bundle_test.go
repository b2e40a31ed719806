package deploy

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/blang/semver/v4"
	"github.com/operator-framework/api/pkg/manifests"
	"github.com/operator-framework/api/pkg/validation"
	"github.com/operator-framework/api/pkg/validation/errors"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/driverpilot/driverpilot/hack/bundle/bundlegen"
)

// validate runs the operator-framework validators on the bundle in dir: the default bundle
// validators (CSV, CRDs, bundle) and the OperatorHub, good-practice and deprecated-API ones.
// Errors and warnings fail the test: the bundle is clean, so a new warning is news.
func validate(t *testing.T, dir string) *manifests.Bundle {
	t.Helper()
	b, err := manifests.GetBundleFromDir(dir)
	if err != nil {
		t.Fatalf("load bundle %s: %v", dir, err)
	}
	validators := validation.DefaultBundleValidators.WithValidators(
		validation.OperatorHubV2Validator,
		validation.StandardCapabilitiesValidator,
		validation.StandardCategoriesValidator,
		validation.GoodPracticesValidator,
		validation.AlphaDeprecatedAPIsValidator,
		validation.ObjectValidator,
	)
	objs := append(b.ObjectsToValidate(), map[string]string{"k8s-version": "1.30"})
	results := validators.Validate(objs...)
	n := 0
	for _, r := range results {
		for _, e := range r.Errors {
			t.Errorf("%s: %s", r.Name, e)
		}
		for _, w := range r.Warnings {
			t.Errorf("warning: %s: %s", r.Name, w)
		}
		n++
	}
	if n == 0 {
		t.Fatal("the validators returned no results: nothing was validated")
	}
	return b
}

// TestBundleValidates validates the committed bundle and checks what OLM relies on.
func TestBundleValidates(t *testing.T) {
	root := repoRoot(t)
	b := validate(t, filepath.Join(root, "bundle"))
	csv := b.CSV
	v := csv.Spec.Version.String()
	if csv.Name != "driverpilot.v"+v {
		t.Errorf("CSV name %q for version %s", csv.Name, v)
	}
	if got, want := csv.Annotations["olm.skipRange"], ">=0.0.0 <"+v; got != want {
		t.Errorf("olm.skipRange %q, want %q", got, want)
	}
	if csv.Spec.MinKubeVersion == "" {
		t.Error("no minKubeVersion")
	}
	if b.Package != bundlegen.Package || !slices.Equal(b.Channels, []string{bundlegen.Channel}) || b.DefaultChannel != bundlegen.Channel {
		t.Errorf("package %q channels %v default %q", b.Package, b.Channels, b.DefaultChannel)
	}
	modes := map[string]bool{}
	for _, m := range csv.Spec.InstallModes {
		modes[string(m.Type)] = m.Supported
	}
	if !modes["AllNamespaces"] {
		t.Errorf("AllNamespaces install mode not supported: %v", csv.Spec.InstallModes)
	}

	// Every CRD is owned, with descriptors.
	owned := map[string]bool{}
	for _, o := range csv.Spec.CustomResourceDefinitions.Owned {
		owned[o.Name] = true
		if o.Description == "" || len(o.SpecDescriptors) == 0 || len(o.StatusDescriptors) == 0 {
			t.Errorf("owned CRD %s lacks a description or spec/status descriptors", o.Name)
		}
	}
	if len(b.V1CRDs) != 3 || len(owned) != 3 {
		t.Errorf("%d CRDs in the bundle, %d owned; want SecurityProfile, NodeSensor and FleetGroup", len(b.V1CRDs), len(owned))
	}
	for _, crd := range b.V1CRDs {
		if !owned[crd.Name] {
			t.Errorf("CRD %s is in the bundle but not owned by the CSV", crd.Name)
		}
	}

	// The install strategy: the manager Deployment with the related image, and the manager's
	// and the agent's permissions.
	strategy := csv.Spec.InstallStrategy.StrategySpec
	if len(strategy.DeploymentSpecs) != 1 || strategy.DeploymentSpecs[0].Name != bundlegen.ManagerName {
		t.Fatalf("install strategy deployments %v", strategy.DeploymentSpecs)
	}
	image := csv.Annotations["containerImage"]
	if len(csv.Spec.RelatedImages) != 1 || csv.Spec.RelatedImages[0].Image != image || image != bundlegen.ImageRepo+":"+v {
		t.Errorf("related images %v, containerImage %q", csv.Spec.RelatedImages, image)
	}
	pod := strategy.DeploymentSpecs[0].Spec.Template.Spec
	if pod.Containers[0].Image != image {
		t.Errorf("manager container runs %s, want %s", pod.Containers[0].Image, image)
	}
	sas := map[string]bool{}
	for _, p := range strategy.ClusterPermissions {
		sas[p.ServiceAccountName] = len(p.Rules) > 0
	}
	if !sas[pod.ServiceAccountName] || !sas["driverpilot-agent"] {
		t.Errorf("clusterPermissions for %v, want the manager's (%s) and the agent's", sas, pod.ServiceAccountName)
	}
	leases := false
	for _, p := range strategy.Permissions {
		for _, r := range p.Rules {
			leases = leases || (p.ServiceAccountName == pod.ServiceAccountName && slices.Contains(r.Resources, "leases"))
		}
	}
	if !leases {
		t.Errorf("permissions %v lack the manager's leader-election lease", strategy.Permissions)
	}

	// alm-examples are the samples, and the console's NodeSensor and FleetGroup examples.
	var examples []map[string]any
	if err := json.Unmarshal([]byte(csv.Annotations["alm-examples"]), &examples); err != nil {
		t.Fatalf("alm-examples: %v", err)
	}
	names := map[string]bool{}
	for _, e := range examples {
		names[e["kind"].(string)+"/"+e["metadata"].(map[string]any)["name"].(string)] = true
	}
	samples := render(t, "config/samples")
	for _, s := range samples {
		if !names[s.GetKind()+"/"+s.GetName()] {
			t.Errorf("sample %s is not in alm-examples", id(s))
		}
	}
	if len(samples) == 0 || len(examples) != len(samples)+2 || !names["NodeSensor/worker-1"] || !names["FleetGroup/default-3f0c2a9d1e"] {
		t.Errorf("alm-examples %v for %d samples", names, len(samples))
	}
}

// TestBundleObjectsApply sends what OLM would create to the API server (dry run): the
// alm-examples, the CSV's Deployment in the operator's namespace, and the extra manifests.
func TestBundleObjectsApply(t *testing.T) {
	installDefault(t)
	root := repoRoot(t)
	b, err := manifests.GetBundleFromDir(filepath.Join(root, "bundle"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	var examples []map[string]any
	if err := json.Unmarshal([]byte(b.CSV.Annotations["alm-examples"]), &examples); err != nil {
		t.Fatal(err)
	}
	for _, e := range examples {
		u := &unstructured.Unstructured{Object: e}
		if err := env.Client.Create(ctx, u, client.DryRunAll, client.FieldValidation("Strict")); err != nil {
			t.Errorf("alm-example %s refused: %v", id(u), err)
		}
	}
	spec := b.CSV.Spec.InstallStrategy.StrategySpec.DeploymentSpecs[0]
	// Under another name: config/default's manager is already installed.
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: spec.Name + "-olm", Namespace: "driverpilot-system", Labels: spec.Label}, Spec: spec.Spec}
	if err := env.Client.Create(ctx, d, client.DryRunAll, client.FieldValidation("Strict")); err != nil {
		t.Errorf("the CSV's Deployment is refused: %v", err)
	}
	for _, o := range b.Objects {
		switch o.GetKind() {
		case "ClusterServiceVersion", "CustomResourceDefinition":
			continue
		}
		u := o.DeepCopy()
		if u.GetKind() == "Service" || u.GetKind() == "ServiceMonitor" || u.GetKind() == "Role" {
			u.SetNamespace("driverpilot-system")
		}
		if err := env.Client.Create(ctx, u, client.DryRunAll, client.FieldValidation("Strict")); err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Errorf("bundle manifest %s refused: %v", id(u), err)
		}
	}
}

// TestBundleIsUpToDate regenerates the bundle at the committed version and compares it byte for
// byte with the committed files: `make bundle` is reproducible and nobody edited its output.
func TestBundleIsUpToDate(t *testing.T) {
	root := repoRoot(t)
	committed, err := bundlegen.Committed(root)
	if err != nil {
		t.Fatal(err)
	}
	gen, err := bundlegen.Generate(bundlegen.Options{Root: root, Version: committed.Version})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for _, f := range gen.Files {
		want[f.Path] = f.Data
	}
	again, err := bundlegen.Generate(bundlegen.Options{Root: root, Version: committed.Version})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range again.Files {
		if !bytes.Equal(want[f.Path], f.Data) {
			t.Errorf("two runs of the generator differ in %s", f.Path)
		}
	}
	onDisk := map[string]bool{bundlegen.DockerfilePath: true}
	for _, dir := range []string{bundlegen.ManifestsDir, bundlegen.MetadataDir} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			onDisk[filepath.ToSlash(rel)] = true
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	stale := false
	for p := range onDisk {
		if _, ok := want[p]; !ok {
			t.Errorf("%s is not generated any more", p)
			stale = true
		}
	}
	for p, data := range want {
		got, err := os.ReadFile(filepath.Join(root, p))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s differs from what config/ generates", p)
			stale = true
		}
	}
	if stale {
		t.Logf("run `make bundle VERSION=%s` and commit bundle/ and bundle.Dockerfile", committed.Version)
	}
}

// TestBundleUpgrade builds the next version: it replaces the committed one, skips every earlier
// one, and validates; a version that is not newer is refused.
func TestBundleUpgrade(t *testing.T) {
	root := repoRoot(t)
	committed, err := bundlegen.Committed(root)
	if err != nil {
		t.Fatal(err)
	}
	cur := semver.MustParse(committed.Version)
	next := cur
	next.Minor++
	next.Patch = 0
	gen, err := bundlegen.Generate(bundlegen.Options{Root: root, Version: next.String()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := bundlegen.Write(dir, gen.Files); err != nil {
		t.Fatal(err)
	}
	b := validate(t, filepath.Join(dir, "bundle"))
	if b.CSV.Spec.Replaces != committed.Name {
		t.Errorf("%s replaces %q, want %q", b.CSV.Name, b.CSV.Spec.Replaces, committed.Name)
	}
	if got, want := b.CSV.Annotations["olm.skipRange"], ">=0.0.0 <"+next.String(); got != want {
		t.Errorf("skipRange %q, want %q", got, want)
	}
	if img := b.CSV.Annotations["containerImage"]; img != bundlegen.ImageRepo+":"+next.String() {
		t.Errorf("containerImage %q for version %s", img, next)
	}
	if _, err := bundlegen.Generate(bundlegen.Options{Root: root, Version: next.String(), Replaces: next.String()}); err == nil {
		t.Error("a bundle replacing its own version was generated")
	}
	if cur.Major == 0 && cur.Minor == 0 && cur.Patch == 0 {
		return
	}
	if _, err := bundlegen.Generate(bundlegen.Options{Root: root, Version: "0.0.0"}); err == nil {
		t.Errorf("version 0.0.0 after %s was generated", cur)
	}
}

// TestValidatorCatchesBrokenBundle shows the validation can fail: a bundle whose CSV lost its
// install modes and whose owned CRD has no CRD file must not pass.
func TestValidatorCatchesBrokenBundle(t *testing.T) {
	root := repoRoot(t)
	b, err := manifests.GetBundleFromDir(filepath.Join(root, "bundle"))
	if err != nil {
		t.Fatal(err)
	}
	b.CSV.Spec.InstallModes = nil
	b.V1CRDs = b.V1CRDs[:1]
	n := 0
	for _, r := range validation.DefaultBundleValidators.Validate(b.ObjectsToValidate()...) {
		for _, e := range r.Errors {
			if e.Level == errors.LevelError {
				n++
			}
		}
	}
	if n < 2 {
		t.Errorf("the validators found %d errors in a broken bundle, want at least 2", n)
	}
}
