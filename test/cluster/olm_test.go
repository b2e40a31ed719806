package cluster_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/driverpilot/driverpilot/hack/bundle/bundlegen"
)

// olmOwner labels what the OLM stand-in created for a CSV, as OLM's olm.owner label does.
const olmOwner = "olm.owner"

// bundleFromDisk reads the committed bundle's manifests.
func bundleFromDisk(t *testing.T, root string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	paths, _ := filepath.Glob(filepath.Join(root, "bundle", "manifests", "*.yaml"))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(p)] = data
	}
	return files
}

// generatedBundle builds the bundle of another version in memory, as `make bundle` would.
func generatedBundle(t *testing.T, root, v, replaces string) map[string][]byte {
	t.Helper()
	b, err := bundlegen.Generate(bundlegen.Options{Root: root, Version: v, Replaces: replaces})
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, f := range b.Files {
		if strings.HasPrefix(f.Path, "bundle/manifests/") {
			files[filepath.Base(f.Path)] = f.Data
		}
	}
	return files
}

// olmObjects turns a bundle into what OLM creates from it: the CRDs and other manifests as they
// are, and from the ClusterServiceVersion its Deployments, a ServiceAccount per permission entry,
// Roles and RoleBindings in the install namespace for permissions, ClusterRoles and
// ClusterRoleBindings for clusterPermissions. Every object is labelled with the CSV's name.
func olmObjects(t *testing.T, files map[string][]byte) (csvName string, objs []*unstructured.Unstructured) {
	t.Helper()
	var csv *unstructured.Unstructured
	for name, data := range files {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(data, &u.Object); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if u.GetKind() == "ClusterServiceVersion" {
			csv = u
			continue
		}
		objs = append(objs, u)
	}
	if csv == nil {
		t.Fatal("the bundle has no ClusterServiceVersion")
	}
	csvName = csv.GetName()
	install, _, _ := unstructured.NestedMap(csv.Object, "spec", "install", "spec")
	sas := map[string]bool{}
	rbac := func(kind, bindingKind, sa string, rules any, i int) {
		name := fmt.Sprintf("%s-%s-%d", csvName, sa, i)
		role := map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": map[string]any{"name": name}, "rules": rules}
		binding := map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": bindingKind, "metadata": map[string]any{"name": name},
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
			"subjects": []any{map[string]any{"kind": "ServiceAccount", "name": sa, "namespace": namespace}}}
		objs = append(objs, &unstructured.Unstructured{Object: role}, &unstructured.Unstructured{Object: binding})
		sas[sa] = true
	}
	for key, kinds := range map[string][2]string{"permissions": {"Role", "RoleBinding"}, "clusterPermissions": {"ClusterRole", "ClusterRoleBinding"}} {
		entries, _ := install[key].([]any)
		for i, e := range entries {
			p := e.(map[string]any)
			rbac(kinds[0], kinds[1], p["serviceAccountName"].(string), p["rules"], i)
		}
	}
	for sa := range sas {
		objs = append(objs, &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": sa}}})
	}
	deployments, _ := install["deployments"].([]any)
	for _, d := range deployments {
		dm := d.(map[string]any)
		objs = append(objs, &unstructured.Unstructured{Object: map[string]any{"apiVersion": "apps/v1", "kind": "Deployment",
			"metadata": map[string]any{"name": dm["name"]}, "spec": dm["spec"]}})
	}
	for _, o := range objs {
		labels := o.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		labels[olmOwner] = csvName
		o.SetLabels(labels)
	}
	return csvName, objs
}

// olmInstall applies a bundle the way OLM would into the install namespace, then removes what a
// replaced CSV created and the new one does not (an upgrade). Kinds this cluster does not serve
// (the ServiceMonitor without a Prometheus Operator) are reported and left out.
func olmInstall(t *testing.T, e *env, files map[string][]byte, replaced string) string {
	t.Helper()
	csvName, objs := olmObjects(t, files)
	mapper := e.client.RESTMapper()
	for _, pass := range []bool{true, false} { // CRDs first
		for _, o := range objs {
			if (o.GetKind() == "CustomResourceDefinition") != pass {
				continue
			}
			mapping, err := mapper.RESTMapping(o.GroupVersionKind().GroupKind(), o.GroupVersionKind().Version)
			if meta.IsNoMatchError(err) {
				t.Logf("OLM stand-in: %s %s left out: this cluster does not serve it", o.GetKind(), o.GetName())
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
				o.SetNamespace(namespace)
			}
			if err := e.client.Patch(t.Context(), o, client.Apply, client.FieldOwner("olm"), client.ForceOwnership); err != nil {
				t.Fatalf("OLM stand-in: apply %s %s: %v", o.GetKind(), o.GetName(), err)
			}
		}
		if pass {
			e.kubectl(t, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
		}
	}
	if replaced != "" {
		olmDelete(t, e, replaced)
	}
	e.kubectl(t, "-n", namespace, "rollout", "status", "deployment/driverpilot-manager", "--timeout=180s")
	return csvName
}

// olmDelete removes what the OLM stand-in created for a CSV (not the CRDs: OLM keeps them).
func olmDelete(t *testing.T, e *env, csvName string) {
	t.Helper()
	for _, kind := range []string{"deployments", "roles", "rolebindings", "serviceaccounts", "services"} {
		e.kubectl(t, "-n", namespace, "delete", kind, "-l", olmOwner+"="+csvName, "--ignore-not-found", "--wait=true")
	}
	for _, kind := range []string{"clusterroles", "clusterrolebindings"} {
		e.kubectl(t, "delete", kind, "-l", olmOwner+"="+csvName, "--ignore-not-found")
	}
}

// testOLMBundle installs the committed bundle the way OLM would (with the namespace and the
// admission policy the README's OLM section asks the user for), verifies the node, upgrades to
// the next bundle version, and removes it all.
func testOLMBundle(t *testing.T, e *env) {
	e.kubectl(t, "create", "namespace", namespace)
	e.kubectl(t, "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")
	e.kubectl(t, "apply", "-f", "config/agent/admission_policy.yaml")
	oldCSV := olmInstall(t, e, bundleFromDisk(t, e.root), "")
	applied := time.Now()
	e.kubectl(t, "apply", "-f", "config/samples/security_v1alpha1_securityprofile.yaml")
	e.waitVerified(t, version, applied, 5*time.Minute)
	t.Logf("installed from the bundle (%s): node verified %s after the profile", oldCSV, time.Since(applied).Round(100*time.Millisecond))

	next := generatedBundle(t, e.root, nextVersion, version)
	stop := e.watchCondition(t)
	started := time.Now()
	newCSV := olmInstall(t, e, next, oldCSV)
	e.waitVerified(t, nextVersion, started, 5*time.Minute)
	t.Logf("upgraded %s -> %s: re-verified in %s", oldCSV, newCSV, time.Since(started).Round(100*time.Millisecond))
	if notTrue, gaps := stop(); len(notTrue) > 0 {
		t.Errorf("the node left True during the OLM upgrade, for another reason than its agent pod's replacement: %v", notTrue)
	} else if len(gaps) > 0 {
		t.Logf("AgentNotRunning while the agent pod was replaced: %d samples", len(gaps))
	}

	e.kubectl(t, "delete", "-f", "config/samples/security_v1alpha1_securityprofile.yaml", "--wait=true", "--timeout=120s")
	olmDelete(t, e, newCSV)
	e.kubectl(t, "delete", "-f", "config/agent/admission_policy.yaml")
	e.kubectl(t, "delete", "namespace", namespace, "--wait=true", "--timeout=120s")
	e.kubectl(t, "delete", "crd", "-l", olmOwner+"="+newCSV)
	assertHostClean(t, e)
	if leftover, err := e.cs.CoreV1().Namespaces().Get(t.Context(), namespace, metav1.GetOptions{}); err == nil {
		t.Errorf("namespace %s left (%s)", namespace, leftover.Status.Phase)
	}
}
