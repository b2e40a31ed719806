// Package manager assembles DriverPilot's controller manager: the SecurityProfile reconciler,
// its known-issue matrix, metrics and health endpoints, and leader election.
package manager

import (
	"context"
	"flag"
	"fmt"
	"time"

	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/controllers"
	"github.com/driverpilot/driverpilot/internal/scheme"
	"github.com/driverpilot/driverpilot/internal/version"
)

// Options configure the manager.
type Options struct {
	MetricsAddr      string
	MetricsSecure    bool
	ProbeAddr        string
	LeaderElect      bool
	Namespace        string
	AgentImage       string
	AgentSA          string
	HeartbeatTimeout time.Duration
	KnownIssuesFile  string
	PprofAddr        string
}

// Bind registers the options as command-line flags.
func (o *Options) Bind(fs *flag.FlagSet) {
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8443", "address of the Prometheus metrics endpoint (0 disables it)")
	fs.BoolVar(&o.MetricsSecure, "metrics-secure", true, "serve metrics over HTTPS to callers the API server authenticates and authorizes (get /metrics)")
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", ":8081", "address of the health and readiness probes (0 disables them)")
	fs.BoolVar(&o.LeaderElect, "leader-elect", false, "elect a leader so only one manager replica is active")
	fs.StringVar(&o.Namespace, "namespace", "driverpilot-system", "namespace of the agent DaemonSets and the leader lease")
	fs.StringVar(&o.AgentImage, "agent-image", "", "image of the node agent (default: the image of the manager's own pod, read through POD_NAME and POD_NAMESPACE; outside a pod "+ImageRepo+":"+version.Version+"); it must be the manager's version, or nodes never re-verify after an upgrade")
	fs.StringVar(&o.AgentSA, "agent-service-account", "driverpilot-agent", "service account of the node agents")
	fs.DurationVar(&o.HeartbeatTimeout, "heartbeat-timeout", 2*time.Minute, "how old an agent heartbeat may be before its node turns Unknown")
	fs.StringVar(&o.KnownIssuesFile, "known-issues", "", "known-issue file replacing the embedded one")
	fs.StringVar(&o.PprofAddr, "pprof-bind-address", "", "address of Go's pprof endpoints, for profiling the manager (empty disables them)")
}

// Defaults returns the options the flags default to.
func Defaults() Options {
	var o Options
	o.Bind(flag.NewFlagSet("defaults", flag.ContinueOnError))
	return o
}

// metricsOptions protects the metrics endpoint the way kubebuilder projects do: HTTPS with a
// self-signed certificate, and each scrape authenticated (TokenReview) and authorized
// (SubjectAccessReview on the /metrics URL) by the API server.
func metricsOptions(o Options) metricsserver.Options {
	m := metricsserver.Options{BindAddress: o.MetricsAddr}
	if o.MetricsSecure {
		m.SecureServing = true
		m.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	return m
}

// New creates a manager with the profile reconciler and health checks; Start runs it.
func New(cfg *rest.Config, o Options) (ctrl.Manager, error) {
	issues, err := knownissues.Default()
	if o.KnownIssuesFile != "" {
		issues, err = knownissues.LoadFile(o.KnownIssuesFile)
	}
	if err != nil {
		return nil, fmt.Errorf("known issues: %w", err)
	}
	image, err := agentImage(context.Background(), cfg, o)
	if err != nil {
		return nil, err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme.New(),
		Metrics: metricsOptions(o),
		// Agent pods only (the manager replaces outdated ones), Nodes trimmed, no managed fields.
		Cache:                   controllers.CacheOptions(o.Namespace),
		HealthProbeBindAddress:  o.ProbeAddr,
		PprofBindAddress:        o.PprofAddr,
		LeaderElection:          o.LeaderElect,
		LeaderElectionID:        "driverpilot-manager.security.driverpilot.io",
		LeaderElectionNamespace: o.Namespace,
	})
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	r := &controllers.SecurityProfileReconciler{
		Client:           mgr.GetClient(),
		Scheme:           mgr.GetScheme(),
		Recorder:         mgr.GetEventRecorder("driverpilot-manager"),
		APIReader:        mgr.GetAPIReader(),
		KnownIssues:      issues,
		HeartbeatTimeout: o.HeartbeatTimeout,
		Agent:            controllers.AgentConfig{Namespace: o.Namespace, Image: image, ServiceAccount: o.AgentSA},
		// The agent ships in the manager's own image, so they share a version.
		AgentVersion: version.Version,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return nil, err
	}
	return mgr, nil
}
