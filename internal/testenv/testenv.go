// Package testenv starts a real kube-apiserver and etcd (controller-runtime's envtest) with
// DriverPilot's generated CRDs installed, for tests that talk to the API.
//
// The binaries come from hack/envtest-assets.sh through KUBEBUILDER_ASSETS, which the test
// command (hack/test.sh) sets. Without them, tests skip with a message that says how to run them;
// CI treats every skip as a failure.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/driverpilot/driverpilot/internal/scheme"
)

// Env is a running control plane.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *runtime.Scheme
	// Environment is the running envtest environment (to add users, for example).
	Environment *envtest.Environment
}

// ErrNoAssets says the control-plane binaries are not available.
var ErrNoAssets = errors.New("KUBEBUILDER_ASSETS is not set: run the suite with `make test` (hack/test.sh), which builds kube-apiserver and etcd and sets it")

// RepoRoot finds the module root by walking up from the working directory to go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Start starts etcd and kube-apiserver and installs the CRDs from config/crd/bases.
func Start() (*Env, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, ErrNoAssets
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	e := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := e.Start()
	if err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	s := scheme.New()
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("client: %w", err)
	}
	return &Env{Config: cfg, Client: c, Scheme: s, Environment: e}, nil
}

// Stop stops the control plane.
func (e *Env) Stop() error {
	if e == nil {
		return nil
	}
	return e.Environment.Stop()
}

// Main is a TestMain body: it starts the control plane for the package's tests, runs each
// setup (for example a manager) against it, runs the tests and stops everything. When the
// binaries are missing the tests run anyway and Require skips them.
func Main(m *testing.M, env **Env, setups ...func(*Env) (stop func(), err error)) {
	e, err := Start()
	if err != nil {
		startErr = err
	}
	*env = e
	var stops []func()
	for _, setup := range setups {
		if e == nil {
			break
		}
		stop, err := setup(e)
		if err != nil {
			startErr = fmt.Errorf("setup: %w", err)
			break
		}
		stops = append(stops, stop)
	}
	code := m.Run()
	for i := len(stops) - 1; i >= 0; i-- {
		stops[i]()
	}
	if e != nil {
		if err := e.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: stop: %v\n", err)
		}
	}
	os.Exit(code)
}

var startErr error

// Require skips the test when the control plane did not start because its binaries are
// missing, and fails it on any other start error.
func Require(t testing.TB) {
	t.Helper()
	if startErr == nil {
		return
	}
	if errors.Is(startErr, ErrNoAssets) {
		t.Skip(startErr.Error())
	}
	t.Fatalf("control plane: %v", startErr)
}

// CreateFromFile creates every object of a multi-document YAML file, leaving those that exist.
func CreateFromFile(ctx context.Context, c client.Client, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if err := c.Create(ctx, u); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: %s %s: %w", filepath.Base(file), u.GetKind(), u.GetName(), err)
		}
	}
	return nil
}
