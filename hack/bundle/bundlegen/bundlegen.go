// Package bundlegen builds DriverPilot's OLM bundle (bundle/, bundle.Dockerfile) from config/:
// it renders config/manifests with the kustomize API and turns the result into a
// ClusterServiceVersion, the CRDs and the other objects OLM installs from a bundle.
//
// The output depends only on config/, the version and the image (and, when no previous version
// is given, on the CSV already in bundle/), so `make bundle` reproduces the committed bundle
// byte for byte.
package bundlegen

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/blang/semver/v4"
	kjson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Names of the package, its channel and image.
const (
	Package        = "driverpilot"
	Channel        = "candidate"
	ImageRepo      = "ghcr.io/driverpilot/driverpilot"
	ManagerName    = "driverpilot-manager"
	CSVFile        = "driverpilot.clusterserviceversion.yaml"
	ManifestsDir   = "bundle/manifests"
	MetadataDir    = "bundle/metadata"
	DockerfilePath = "bundle.Dockerfile"
	// Namespace is where config/ installs the operator; OLM installs into the namespace the
	// user picks, so the bundle names none.
	Namespace = "driverpilot-system"
)

// NoReplaces as Options.Replaces makes a bundle that replaces no earlier version.
const NoReplaces = "none"

// Options say which bundle to build.
type Options struct {
	// Root is the repository root (config/ and bundle/ below it).
	Root string
	// Version is the operator version, x.y.z.
	Version string
	// Replaces is the version this one upgrades from. Empty: taken from the committed bundle
	// (its version when that differs from Version, else what it replaces). NoReplaces: none.
	Replaces string
	// Image is the manager and agent image; empty means ImageRepo:Version.
	Image string
}

// File is one generated file, by its path below the repository root.
type File struct {
	Path string
	Data []byte
}

// Bundle is the generated bundle.
type Bundle struct {
	Files []File
	// LeftOut names the rendered objects OLM cannot install from a bundle, with the reason.
	LeftOut []string
}

// leftOut are the kinds config/default installs that a bundle cannot carry, and why.
var leftOut = map[string]string{
	"Namespace":                        "OLM installs into the namespace the user picks",
	"ResourceQuota":                    "not a kind OLM installs from a bundle; create it in the install namespace where the provider needs it (GKE)",
	"ValidatingAdmissionPolicy":        "not a kind OLM installs from a bundle; apply config/agent/admission_policy.yaml",
	"ValidatingAdmissionPolicyBinding": "not a kind OLM installs from a bundle; apply config/agent/admission_policy.yaml",
}

// extraKinds are the other kinds OLM installs from a bundle's manifests directory.
var extraKinds = map[string]bool{
	"Service": true, "ServiceMonitor": true, "PrometheusRule": true, "ConfigMap": true, "Secret": true,
	"PodDisruptionBudget": true, "PriorityClass": true, "NetworkPolicy": true, "ClusterRole": true, "Role": true,
	"VerticalPodAutoscaler": true, "ConsoleYAMLSample": true, "ConsoleQuickStart": true,
	"ConsoleCLIDownload": true, "ConsoleLink": true,
}

type object = map[string]any

// Generate renders config/manifests and builds the bundle in memory.
func Generate(o Options) (*Bundle, error) {
	v, err := semver.Parse(o.Version)
	if err != nil {
		return nil, fmt.Errorf("version %q: %w", o.Version, err)
	}
	image := o.Image
	if image == "" {
		image = ImageRepo + ":" + v.String()
	}
	replaces, err := previous(o, v)
	if err != nil {
		return nil, err
	}
	objs, err := Render(filepath.Join(o.Root, "config", "manifests"))
	if err != nil {
		return nil, err
	}

	var (
		csv           object
		crds          []object
		examples      []object
		deployments   []object
		serviceAccts  = map[string]bool{}
		roles         = map[string]object{} // kind/name
		bindings      []object
		extras        []object
		out           Bundle
		usedRoles     = map[string]bool{}
		permissions   = map[string][]any{}
		clusterPerms  = map[string][]any{}
		managerSAName string
	)
	for _, obj := range objs {
		kind, name := str(obj, "kind"), str(obj, "metadata", "name")
		group := strings.SplitN(str(obj, "apiVersion"), "/", 2)[0]
		switch {
		case kind == "ClusterServiceVersion":
			if csv != nil {
				return nil, errors.New("config/manifests renders more than one ClusterServiceVersion")
			}
			csv = obj
		case kind == "CustomResourceDefinition":
			crds = append(crds, obj)
		case group == "security.driverpilot.io":
			examples = append(examples, obj)
		case kind == "Deployment":
			deployments = append(deployments, obj)
		case kind == "ServiceAccount":
			if ns := str(obj, "metadata", "namespace"); ns != Namespace {
				return nil, fmt.Errorf("service account %s is in namespace %q, not %s", name, ns, Namespace)
			}
			serviceAccts[name] = true
		case kind == "Role" || kind == "ClusterRole":
			roles[kind+"/"+name] = obj
		case kind == "RoleBinding" || kind == "ClusterRoleBinding":
			bindings = append(bindings, obj)
		case leftOut[kind] != "":
			out.LeftOut = append(out.LeftOut, fmt.Sprintf("%s %s: %s", kind, name, leftOut[kind]))
		case extraKinds[kind]:
			extras = append(extras, obj)
		default:
			return nil, fmt.Errorf("%s %s: OLM does not install this kind from a bundle; leave it out of config/manifests or teach hack/bundle about it", kind, name)
		}
	}
	if csv == nil {
		return nil, errors.New("config/manifests renders no ClusterServiceVersion base")
	}
	if len(deployments) != 1 || str(deployments[0], "metadata", "name") != ManagerName {
		return nil, fmt.Errorf("config/manifests must render exactly one Deployment, %s; got %d", ManagerName, len(deployments))
	}
	deploy := deployments[0]
	managerSAName = str(deploy, "spec", "template", "spec", "serviceAccountName")
	if !serviceAccts[managerSAName] {
		return nil, fmt.Errorf("the manager's service account %q is not in config/", managerSAName)
	}
	if err := setImage(deploy, image); err != nil {
		return nil, err
	}

	// Bindings of our service accounts become the install strategy's permissions; OLM creates
	// the service accounts and the (cluster) roles and bindings for them.
	sort.Slice(bindings, func(i, j int) bool { return key(bindings[i]) < key(bindings[j]) })
	for _, b := range bindings {
		kind, name := str(b, "kind"), str(b, "metadata", "name")
		roleKey := str(b, "roleRef", "kind") + "/" + str(b, "roleRef", "name")
		role, ok := roles[roleKey]
		if !ok {
			return nil, fmt.Errorf("%s %s refers to %s, which config/ does not define", kind, name, roleKey)
		}
		if kind == "ClusterRoleBinding" && str(b, "roleRef", "kind") != "ClusterRole" {
			return nil, fmt.Errorf("%s %s refers to %s", kind, name, roleKey)
		}
		usedRoles[roleKey] = true
		rules, _ := role["rules"].([]any)
		subjects, _ := b["subjects"].([]any)
		if len(subjects) == 0 {
			return nil, fmt.Errorf("%s %s has no subjects", kind, name)
		}
		for _, s := range subjects {
			subj, _ := s.(object)
			if str(subj, "kind") != "ServiceAccount" || str(subj, "namespace") != Namespace || !serviceAccts[str(subj, "name")] {
				return nil, fmt.Errorf("%s %s binds %v: a bundle can only grant to its own service accounts", kind, name, subj)
			}
			sa := str(subj, "name")
			if kind == "RoleBinding" {
				permissions[sa] = append(permissions[sa], rules...)
			} else {
				clusterPerms[sa] = append(clusterPerms[sa], rules...)
			}
		}
	}
	for sa := range serviceAccts {
		if sa != managerSAName && permissions[sa] == nil && clusterPerms[sa] == nil {
			return nil, fmt.Errorf("service account %s has no permissions and runs no Deployment: OLM would not create it", sa)
		}
	}
	for k, role := range roles {
		if !usedRoles[k] {
			extras = append(extras, role)
		}
	}

	if err := fillCSV(csv, v, replaces, image, deploy, permissions, clusterPerms, crds, examples); err != nil {
		return nil, err
	}

	add := func(path string, obj object) error {
		data, err := yaml.Marshal(obj)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		out.Files = append(out.Files, File{Path: path, Data: data})
		return nil
	}
	if err := add(ManifestsDir+"/"+CSVFile, csv); err != nil {
		return nil, err
	}
	for _, crd := range crds {
		if err := add(ManifestsDir+"/"+str(crd, "spec", "group")+"_"+str(crd, "spec", "names", "plural")+".yaml", crd); err != nil {
			return nil, err
		}
	}
	for _, x := range extras {
		md, _ := x["metadata"].(object)
		delete(md, "namespace")
		if err := add(ManifestsDir+"/"+manifestName(x), x); err != nil {
			return nil, err
		}
	}
	out.Files = append(out.Files,
		File{Path: MetadataDir + "/annotations.yaml", Data: annotationsYAML()},
		File{Path: DockerfilePath, Data: dockerfile()},
	)
	sort.Slice(out.Files, func(i, j int) bool { return out.Files[i].Path < out.Files[j].Path })
	for i := 1; i < len(out.Files); i++ {
		if out.Files[i].Path == out.Files[i-1].Path {
			return nil, fmt.Errorf("two objects would be written to %s", out.Files[i].Path)
		}
	}
	sort.Strings(out.LeftOut)
	return &out, nil
}

// Render builds a kustomization directory with the kustomize API, as `kustomize build` does.
func Render(dir string) ([]object, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	var objs []object
	for _, r := range m.Resources() {
		// Through JSON, so numbers are int64 or float64 as in any decoded Kubernetes object.
		data, err := r.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("kustomize build %s: %s: %w", dir, r.CurId(), err)
		}
		var obj object
		if err := kjson.Unmarshal(data, &obj); err != nil {
			return nil, fmt.Errorf("kustomize build %s: %s: %w", dir, r.CurId(), err)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

// previous decides what this version replaces.
func previous(o Options, v semver.Version) (string, error) {
	var prev string
	switch o.Replaces {
	case NoReplaces:
		return "", nil
	case "":
		committed, err := Committed(o.Root)
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		if err != nil {
			return "", err
		}
		prev = committed.Version
		if prev == v.String() {
			prev = strings.TrimPrefix(committed.Replaces, Package+".v")
		}
		if prev == "" {
			return "", nil
		}
	default:
		prev = o.Replaces
	}
	pv, err := semver.Parse(prev)
	if err != nil {
		return "", fmt.Errorf("previous version %q: %w", prev, err)
	}
	if !pv.LT(v) {
		return "", fmt.Errorf("version %s must be newer than the version it replaces, %s", v, pv)
	}
	return Package + ".v" + pv.String(), nil
}

// CommittedCSV is what the bundle on disk says about itself.
type CommittedCSV struct {
	Name, Version, Replaces string
}

// Committed reads the version and the replaced CSV of the bundle in root/bundle.
func Committed(root string) (*CommittedCSV, error) {
	data, err := os.ReadFile(filepath.Join(root, ManifestsDir, CSVFile))
	if err != nil {
		return nil, err
	}
	var csv object
	if err := yaml.Unmarshal(data, &csv); err != nil {
		return nil, fmt.Errorf("committed CSV: %w", err)
	}
	return &CommittedCSV{Name: str(csv, "metadata", "name"), Version: str(csv, "spec", "version"), Replaces: str(csv, "spec", "replaces")}, nil
}

// setImage points the manager container at image (the manager gives the agents its own image).
func setImage(deploy object, image string) error {
	containers, _ := get(deploy, "spec", "template", "spec", "containers").([]any)
	found := false
	for _, c := range containers {
		c, _ := c.(object)
		if str(c, "name") != "manager" {
			continue
		}
		if repo, _, _ := strings.Cut(str(c, "image"), ":"); repo != ImageRepo {
			return fmt.Errorf("the manager image %q is not %s", str(c, "image"), ImageRepo)
		}
		c["image"] = image
		found = true
	}
	if !found {
		return fmt.Errorf("no manager container in Deployment %s", ManagerName)
	}
	return nil
}

func fillCSV(csv object, v semver.Version, replaces, image string, deploy object,
	permissions, clusterPerms map[string][]any, crds, examples []object) error {
	md := csv["metadata"].(object)
	md["name"] = Package + ".v" + v.String()
	ann, _ := md["annotations"].(object)
	if ann == nil {
		ann = object{}
		md["annotations"] = ann
	}
	ex, err := json.MarshalIndent(examples, "", "  ")
	if err != nil {
		return fmt.Errorf("alm-examples: %w", err)
	}
	ann["alm-examples"] = string(ex)
	ann["containerImage"] = image
	ann["olm.skipRange"] = ">=0.0.0 <" + v.String()

	spec := csv["spec"].(object)
	spec["version"] = v.String()
	delete(spec, "replaces")
	if replaces != "" {
		spec["replaces"] = replaces
	}
	spec["relatedImages"] = []any{object{"name": Package, "image": image}}

	dmd := deploy["metadata"].(object)
	dspec := object{"name": str(deploy, "metadata", "name"), "spec": deploy["spec"]}
	if labels, ok := dmd["labels"].(object); ok {
		dspec["label"] = labels
	}
	strategy := object{"deployments": []any{dspec}}
	perms := func(m map[string][]any) []any {
		var out []any
		for _, sa := range sortedKeys(m) {
			out = append(out, object{"serviceAccountName": sa, "rules": m[sa]})
		}
		return out
	}
	if len(permissions) > 0 {
		strategy["permissions"] = perms(permissions)
	}
	if len(clusterPerms) > 0 {
		strategy["clusterPermissions"] = perms(clusterPerms)
	}
	spec["install"] = object{"strategy": "deployment", "spec": strategy}
	return checkOwned(spec, crds)
}

// checkOwned makes sure the hand-written owned-CRD entries match config/crd: the same CRDs,
// served versions and kinds, and descriptor paths that exist in the schema.
func checkOwned(spec object, crds []object) error {
	owned, _ := get(spec, "customresourcedefinitions", "owned").([]any)
	byName := map[string]object{}
	for _, crd := range crds {
		byName[str(crd, "metadata", "name")] = crd
	}
	seen := map[string]bool{}
	var errs []error
	for _, o := range owned {
		o, _ := o.(object)
		name := str(o, "name")
		crd, ok := byName[name]
		if !ok {
			errs = append(errs, fmt.Errorf("owned CRD %s is not in config/crd", name))
			continue
		}
		seen[name] = true
		if k := str(crd, "spec", "names", "kind"); k != str(o, "kind") {
			errs = append(errs, fmt.Errorf("owned CRD %s: kind %q, the CRD says %q", name, str(o, "kind"), k))
		}
		var schema object
		versions, _ := get(crd, "spec", "versions").([]any)
		for _, ver := range versions {
			ver, _ := ver.(object)
			if str(ver, "name") == str(o, "version") && ver["served"] == true {
				schema, _ = get(ver, "schema", "openAPIV3Schema").(object)
			}
		}
		if schema == nil {
			errs = append(errs, fmt.Errorf("owned CRD %s: version %q is not served", name, str(o, "version")))
			continue
		}
		for _, part := range []string{"spec", "status"} {
			descs, _ := o[part+"Descriptors"].([]any)
			for _, d := range descs {
				path := str(d.(object), "path")
				if !schemaHas(schema, append([]string{part}, strings.Split(path, ".")...)) {
					errs = append(errs, fmt.Errorf("owned CRD %s: %sDescriptor %q is not a field of .%s", name, part, path, part))
				}
			}
		}
	}
	for name := range byName {
		if !seen[name] {
			errs = append(errs, fmt.Errorf("CRD %s has no owned entry in config/manifests/bases/%s", name, CSVFile))
		}
	}
	return errors.Join(errs...)
}

func schemaHas(schema object, path []string) bool {
	for _, p := range path {
		if items, ok := schema["items"].(object); ok && schema["type"] == "array" {
			schema = items
		}
		props, _ := schema["properties"].(object)
		next, ok := props[p].(object)
		if !ok {
			return false
		}
		schema = next
	}
	return true
}

// manifestName names an extra manifest the way operator-sdk does: name_group_version_kind.yaml.
func manifestName(obj object) string {
	gv := strings.ReplaceAll(str(obj, "apiVersion"), "/", "_")
	return str(obj, "metadata", "name") + "_" + gv + "_" + strings.ToLower(str(obj, "kind")) + ".yaml"
}

var bundleAnnotations = [][2]string{
	{"operators.operatorframework.io.bundle.mediatype.v1", "registry+v1"},
	{"operators.operatorframework.io.bundle.manifests.v1", "manifests/"},
	{"operators.operatorframework.io.bundle.metadata.v1", "metadata/"},
	{"operators.operatorframework.io.bundle.package.v1", Package},
	{"operators.operatorframework.io.bundle.channels.v1", Channel},
	{"operators.operatorframework.io.bundle.channel.default.v1", Channel},
}

func annotationsYAML() []byte {
	var b bytes.Buffer
	b.WriteString("# Generated by `make bundle` (hack/bundle); the same labels are on bundle.Dockerfile.\nannotations:\n")
	for _, a := range bundleAnnotations {
		fmt.Fprintf(&b, "  %s: %s\n", a[0], a[1])
	}
	return b.Bytes()
}

func dockerfile() []byte {
	var b bytes.Buffer
	b.WriteString("# DriverPilot's OLM bundle image. Generated by `make bundle` (hack/bundle) from config/; do not edit.\n")
	b.WriteString("# Build it from the repository root: docker build -f bundle.Dockerfile -t IMAGE .\n")
	b.WriteString("FROM scratch\n\n")
	for _, a := range bundleAnnotations {
		fmt.Fprintf(&b, "LABEL %s=%s\n", a[0], a[1])
	}
	b.WriteString("\nCOPY bundle/manifests /manifests/\nCOPY bundle/metadata /metadata/\n")
	return b.Bytes()
}

// Write replaces the bundle under root with files: bundle/manifests and bundle/metadata hold
// exactly the generated files afterwards.
func Write(root string, files []File) error {
	for _, dir := range []string{ManifestsDir, MetadataDir} {
		if err := os.RemoveAll(filepath.Join(root, dir)); err != nil {
			return err
		}
	}
	for _, f := range files {
		p := filepath.Join(root, f.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, f.Data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func get(obj object, path ...string) any {
	var cur any = obj
	for _, p := range path {
		m, ok := cur.(object)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

func str(obj object, path ...string) string {
	s, _ := get(obj, path...).(string)
	return s
}

func key(obj object) string {
	return str(obj, "kind") + "/" + str(obj, "metadata", "name")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
