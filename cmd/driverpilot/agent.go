//go:build !matrixguest

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/driverpilot/driverpilot/agent"
	"github.com/driverpilot/driverpilot/agent/falco"
	"github.com/driverpilot/driverpilot/agent/probe"
	"github.com/driverpilot/driverpilot/agent/sensor"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

func init() {
	subcommands["agent"] = subcommand{runAgent, "run the node agent (probe, sensor, self-test, report)"}
}

// runAgent runs the node agent until it is interrupted.
func runAgent(args []string) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	var nf nodeFlags
	nf.bind(fs, "how often the agent reports it is alive")
	workdir := fs.String("workdir", os.TempDir(), "where the self-test stages its private overlay")
	alerts := fs.String("alerts", "-", "where Falco-shaped alerts go: - for stdout, a file, or empty for none")
	var fo falcoFlags
	fo.bind(fs)
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	log, c, cleanup, err := nf.setup("agent")
	defer cleanup()
	if err != nil {
		return err
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
	ctx := ctrl.SetupSignalHandler()
	a := agent.New(agent.Options{
		NodeName:          nf.nodeName,
		Profile:           nf.profile,
		Client:            c,
		Prober:            probe.New(nf.hostRoot),
		NewSensor:         chooseSensor(ctx, alertOut, nf.nodeName, nf.hostRoot, fo, c, log),
		WorkDir:           *workdir,
		HeartbeatInterval: nf.heartbeat,
		LeaseNamespace:    nf.leaseNamespace,
		Holder:            nf.holder,
		Log:               log,
	})
	return a.Run(ctx)
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

// falcoFlags configure the agent's end of a Falco sensor (sensor.kind: Falco): the pod's Falco
// posts its alerts to the receiver, and the init step (driverpilot falco-config) wrote the
// configuration Falco runs with.
type falcoFlags struct {
	listen, configDir, healthURL, restart string
	startTimeout                          time.Duration
}

func (f *falcoFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "falco-listen", "", "address of the receiver for Falco's http_output (e.g. "+falco.DefaultListen+"); empty: this agent cannot use a Falco sensor")
	fs.StringVar(&f.configDir, "falco-config-dir", "", "the configuration tree `driverpilot falco-config` wrote; Falco must run with the driver named there")
	fs.StringVar(&f.healthURL, "falco-health-url", "", "Falco's health endpoint (e.g. http://127.0.0.1:8765/healthz); the self-test starts once it answers 200")
	fs.DurationVar(&f.startTimeout, "falco-start-timeout", 3*time.Minute, "how long to wait for Falco to be healthy, or to be restarted with a new driver")
	fs.StringVar(&f.restart, "falco-restart", "none", "how to restart Falco when the driver decision changes: delete-pod (the agent deletes its own pod $POD_NAMESPACE/$POD_NAME, so the init step writes the new driver and the driver loader installs it; needs RBAC delete on pods) or none")
}

// chooseSensor returns the sensor a NodeSensor spec asks for: the built-in eBPF sensor, or the
// receiver for the pod's Falco.
func chooseSensor(ctx context.Context, alerts io.Writer, nodeName, hostRoot string, fo falcoFlags, c client.Client, log logr.Logger) func(v1alpha1.NodeSensorSpec) (sensor.Sensor, error) {
	return func(spec v1alpha1.NodeSensorSpec) (sensor.Sensor, error) {
		if spec.Sensor.Kind != v1alpha1.SensorFalco {
			return sensor.NewBuiltin(sensor.Options{Alerts: alerts, Hostname: nodeName, ProcRoot: filepath.Join(hostRoot, "proc")}), nil
		}
		if fo.listen == "" {
			return nil, fmt.Errorf("sensor kind Falco: this agent runs without a Falco receiver (--falco-listen); it must run as the sidecar of the profile's Falco pod")
		}
		o := falco.Options{
			Listen: fo.listen, ConfigDir: fo.configDir, HealthURL: fo.healthURL, StartTimeout: fo.startTimeout,
			Context: ctx, Log: log.WithName("falco"),
		}
		switch fo.restart {
		case "none":
		case "delete-pod":
			o.Restart = deleteOwnPod(c)
		default:
			return nil, fmt.Errorf("--falco-restart %q: want none or delete-pod", fo.restart)
		}
		return falco.New(o), nil
	}
}

// deleteOwnPod restarts Falco by deleting the agent's own pod: the DaemonSet recreates it, its
// init step writes the new decision and the driver loader installs that driver. Restarting only
// the Falco container would not rerun the loader.
func deleteOwnPod(c client.Client) func(ctx context.Context, configured, wanted v1alpha1.Driver) error {
	return func(ctx context.Context, _, _ v1alpha1.Driver) error {
		name, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
		if name == "" || ns == "" {
			return fmt.Errorf("POD_NAME and POD_NAMESPACE must name the agent's pod")
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		if err := c.Delete(ctx, pod); err != nil {
			return fmt.Errorf("delete pod %s/%s: %w", ns, name, err)
		}
		return nil
	}
}
