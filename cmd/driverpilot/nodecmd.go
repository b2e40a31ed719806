//go:build !matrixguest

package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/driverpilot/driverpilot/agent"
	"github.com/driverpilot/driverpilot/agent/probe"
	"github.com/driverpilot/driverpilot/internal/scheme"
)

// nodeFlags are the flags of the commands that run on a node and talk to the API as its agent.
type nodeFlags struct {
	nodeName        string
	profile         string
	kubeconfig      string
	hostRoot        string
	heartbeat       time.Duration
	leaseNamespace  string
	holder          string
	mountSecurityfs bool
	zap             zap.Options
}

func (f *nodeFlags) bind(fs *flag.FlagSet, heartbeatHelp string) {
	fs.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "name of the node this agent runs on (default $NODE_NAME)")
	fs.StringVar(&f.profile, "profile", "", "the SecurityProfile whose DaemonSet runs this pod; it stays idle on a node another profile governs (empty: any)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or the in-cluster service account)")
	fs.StringVar(&f.hostRoot, "host-root", "/", "where the host's root filesystem is visible (/host in a pod)")
	fs.DurationVar(&f.heartbeat, "heartbeat", agent.DefaultHeartbeat, heartbeatHelp)
	fs.StringVar(&f.leaseNamespace, "lease-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the node's heartbeat Lease (default $POD_NAMESPACE; empty: heartbeats go to the NodeSensor status)")
	fs.StringVar(&f.holder, "holder", os.Getenv("POD_NAME"), "who holds the heartbeat Lease (default $POD_NAME, else the node name)")
	fs.BoolVar(&f.mountSecurityfs, "mount-securityfs", true, "mount securityfs below the host root when it is not mounted, to read the lockdown mode")
	f.zap.BindFlags(fs)
}

// setup checks the flags, sets up logging, the API client and securityfs.
// The returned cleanup unmounts what setup mounted.
func (f *nodeFlags) setup(command string) (logr.Logger, client.WithWatch, func(), error) {
	noop := func() {}
	if f.nodeName == "" {
		fmt.Fprintf(os.Stderr, "driverpilot %s: --node-name (or $NODE_NAME) is required\n", command)
		return logr.Discard(), nil, noop, errUsage
	}
	log := zap.New(zap.UseFlagOptions(&f.zap)).WithValues("node", f.nodeName)
	ctrl.SetLogger(log)
	cfg, err := restConfig(f.kubeconfig)
	if err != nil {
		return log, nil, noop, err
	}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return log, nil, noop, fmt.Errorf("client: %w", err)
	}
	// No memlock raise here: the probe raises RLIMIT_MEMLOCK where the kernel charges BPF memory
	// to it (before 5.11), and where it cannot (no CAP_SYS_RESOURCE) it reports that as a fact
	// (ebpf.memlock) instead of the agent exiting before it can say anything.
	cleanup := noop
	if f.mountSecurityfs {
		if unmount, err := probe.MountSecurityFS(f.hostRoot); err != nil {
			log.Info("Lockdown mode will be unknown: securityfs not mounted", "error", err.Error())
		} else {
			cleanup = func() { _ = unmount() }
		}
	}
	return log, c, cleanup, nil
}
