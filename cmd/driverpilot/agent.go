package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/driverpilot/driverpilot/agent"
	"github.com/driverpilot/driverpilot/agent/probe"
	"github.com/driverpilot/driverpilot/agent/sensor"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/scheme"
)

// runAgent runs the node agent until it is interrupted.
func runAgent(args []string) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	nodeName := fs.String("node-name", os.Getenv("NODE_NAME"), "name of the node this agent runs on (default $NODE_NAME)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or the in-cluster service account)")
	hostRoot := fs.String("host-root", "/", "where the host's root filesystem is visible (/host in a pod)")
	heartbeat := fs.Duration("heartbeat", 30*time.Second, "how often the agent reports it is alive")
	workdir := fs.String("workdir", os.TempDir(), "where the self-test stages its private overlay")
	alerts := fs.String("alerts", "-", "where Falco-shaped alerts go: - for stdout, a file, or empty for none")
	mountSecurityfs := fs.Bool("mount-securityfs", true, "mount securityfs below the host root when it is not mounted, to read the lockdown mode")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *nodeName == "" {
		fmt.Fprintln(os.Stderr, "driverpilot agent: --node-name (or $NODE_NAME) is required")
		return errUsage
	}
	log := zap.New(zap.UseFlagOptions(&zapOpts)).WithValues("node", *nodeName)
	ctrl.SetLogger(log)

	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raise memlock limit: %w", err)
	}
	if *mountSecurityfs {
		unmount, err := probe.MountSecurityFS(*hostRoot)
		if err != nil {
			log.Info("Lockdown mode will be unknown: securityfs not mounted", "error", err.Error())
		} else {
			defer unmount()
		}
	}
	var alertOut io.Writer
	switch *alerts {
	case "":
	case "-":
		alertOut = os.Stdout
	default:
		f, err := os.OpenFile(*alerts, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("alerts file: %w", err)
		}
		defer f.Close()
		alertOut = f
	}
	a := agent.New(agent.Options{
		NodeName:          *nodeName,
		Client:            c,
		Prober:            probe.New(*hostRoot),
		NewSensor:         builtinOnly(alertOut, *nodeName),
		WorkDir:           *workdir,
		HeartbeatInterval: *heartbeat,
		Log:               log,
	})
	return a.Run(ctrl.SetupSignalHandler())
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return cfg, nil
}

// builtinOnly runs the built-in sensor; a Falco profile needs the Falco receiver, which this
// agent does not have yet.
func builtinOnly(alerts io.Writer, nodeName string) func(v1alpha1.NodeSensorSpec) (sensor.Sensor, error) {
	return func(spec v1alpha1.NodeSensorSpec) (sensor.Sensor, error) {
		if spec.Sensor.Kind == v1alpha1.SensorFalco {
			return nil, fmt.Errorf("sensor kind Falco is not supported by this agent")
		}
		return sensor.NewBuiltin(sensor.Options{Alerts: alerts, Hostname: nodeName}), nil
	}
}
