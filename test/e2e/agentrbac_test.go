package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/driverpilot/driverpilot/internal/testenv"
)

// The agent runs as itself: the driverpilot-agent service account with config/agent's RBAC and
// admission policies, exactly as committed, and a token bound to a pod on its node (TokenRequest),
// which carries the node's name, as a DaemonSet pod's projected token does. Running it as
// system:masters would prove the agent, not its permissions.

const agentNamespace = "driverpilot-system"

var installAgentRBAC sync.Once

// agentKubeconfig returns a kubeconfig for the agent of node (the Node must exist).
func agentKubeconfig(t *testing.T, node string) string {
	t.Helper()
	ctx := context.Background()
	installAgentRBAC.Do(func() { applyAgentConfig(t) })
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "driverpilot-agent-" + node, Namespace: agentNamespace},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "driverpilot-agent",
			Containers: []corev1.Container{{Name: "agent", Image: "driverpilot:e2e"}}},
	}
	if err := env.Client.Create(ctx, pod); err != nil {
		t.Fatalf("agent pod: %v", err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), pod) })
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(agentNamespace).CreateToken(ctx, "driverpilot-agent", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{BoundObjectRef: &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for the agent: %v", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: env.Config.Host, CertificateAuthorityData: env.Config.CAData}
	cfg.AuthInfos["agent"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["agent"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "agent"}
	cfg.CurrentContext = "agent"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	checkAgentIdentity(t, path, node)
	return path
}

// checkAgentIdentity asks the API server who the kubeconfig's user is: the agent's service
// account with its node's name in the token, and nothing like an administrator.
func checkAgentIdentity(t *testing.T, kubeconfig, node string) {
	t.Helper()
	ctx := context.Background()
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	review, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("who am I: %v", err)
	}
	u := review.Status.UserInfo
	if u.Username != "system:serviceaccount:"+agentNamespace+":driverpilot-agent" || fmt.Sprint(u.Extra["authentication.kubernetes.io/node-name"]) != "["+node+"]" {
		t.Fatalf("the agent runs as %s with extra %v, want the driverpilot-agent service account bound to node %s", u.Username, u.Extra, node)
	}
	if _, err := cs.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the agent may list secrets (%v): it must run with its own permissions only", err)
	}
}

// applyAgentConfig creates everything under config/agent (the agent's service account, roles,
// bindings and admission policies).
func applyAgentConfig(t *testing.T) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(root, "config", "agent", "*.yaml"))
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		if err := testenv.CreateFromFile(context.Background(), env.Client, f); err != nil {
			t.Fatal(err)
		}
	}
}
