package deploy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// freeLoopbackAddr returns a loopback address with a port nobody listens on.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// checkMetricsServeOnlyAuthorizedScrapers scrapes a manager started as configured by the rendered
// Deployment (HTTPS metrics, each scrape checked with the API server) under its shipped RBAC: an
// anonymous scrape is refused, a service account bound to driverpilot-metrics-reader is served,
// and one without that role is refused.
func checkMetricsServeOnlyAuthorizedScrapers(t *testing.T, addr, namespace string) {
	t.Helper()
	ctx := context.Background()
	d := struct{ Namespace string }{namespace}
	// A scraper: a service account bound to the shipped metrics reader role, with a real token.
	cs := kubernetes.NewForConfigOrDie(env.Config)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "prometheus-test", Namespace: d.Namespace}}
	if _, err := cs.CoreV1().ServiceAccounts(d.Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "prometheus-test-metrics"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "driverpilot-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa.Name, Namespace: d.Namespace}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(d.Namespace).CreateToken(ctx, sa.Name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// The manager's certificate is self-signed: the scraper skips verification, as the shipped
	// ServiceMonitor does.
	httpc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	scrape := func(token string) (int, string, error) {
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := httpc.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	var code int
	var body string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if code, body, err = scrape(tr.Status.Token); err == nil && code == http.StatusOK {
			break
		}
	}
	if code != http.StatusOK || !strings.Contains(body, "controller_runtime_") {
		t.Fatalf("authorized scrape: status %d, err %v, body %.200q", code, err, body)
	}
	if code, _, err := scrape(""); err != nil || (code != http.StatusUnauthorized && code != http.StatusForbidden) {
		t.Errorf("anonymous scrape: status %d, err %v; want 401 or 403", code, err)
	}
	// A valid token without the reader role is refused too.
	other := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "not-a-scraper", Namespace: d.Namespace}}
	if _, err := cs.CoreV1().ServiceAccounts(d.Namespace).Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	otr, err := cs.CoreV1().ServiceAccounts(d.Namespace).CreateToken(ctx, other.Name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if code, _, err := scrape(otr.Status.Token); err != nil || code != http.StatusForbidden {
		t.Errorf("scrape by an unauthorized service account: status %d, err %v; want 403", code, err)
	}
}
