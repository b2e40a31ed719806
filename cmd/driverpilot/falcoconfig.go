//go:build !matrixguest

package main

import (
	"flag"
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/driverpilot/driverpilot/agent"
	"github.com/driverpilot/driverpilot/agent/falco"
	"github.com/driverpilot/driverpilot/agent/probe"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
	"github.com/driverpilot/driverpilot/internal/selection"
)

// runFalcoConfig is the init step of a Falco profile's pod: it waits for this node's driver
// decision and writes it where Falco and falcoctl read it (agent/falco.WriteConfig). The manager
// decides only from probed facts, and the agent sidecar does not run before this step ends, so
// the step probes the node and reports the facts (and heartbeats) itself while it waits.
func runFalcoConfig(args []string) error {
	fs := flag.NewFlagSet("falco-config", flag.ContinueOnError)
	var nf nodeFlags
	nf.bind(fs, "how often to report alive while waiting for the decision")
	outDir := fs.String("output-dir", "/etc/driverpilot/falco", "where to write the configuration tree (the pod's shared volume)")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	log, c, cleanup, err := nf.setup("falco-config")
	defer cleanup()
	if err != nil {
		return err
	}
	ctx := ctrl.SetupSignalHandler()
	a := agent.New(agent.Options{
		NodeName: nf.nodeName, Profile: nf.profile, Client: c, Prober: probe.New(nf.hostRoot),
		HeartbeatInterval: nf.heartbeat, LeaseNamespace: nf.leaseNamespace, Holder: nf.holder, Log: log,
	})
	spec, err := a.WaitForDecision(ctx)
	if err != nil {
		return err
	}
	if spec.Sensor.Kind != v1alpha1.SensorFalco {
		return fmt.Errorf("node sensor %s is for a %s sensor, not Falco", nf.nodeName, spec.Sensor.Kind)
	}
	var v *kernelversion.Version
	if fv, ok := selection.FalcoVersion(spec.Sensor); ok {
		v = &fv
	}
	if err := falco.Offers(v, spec.Driver); err != nil {
		return fmt.Errorf("driver %s for image %s: %w", spec.Driver, spec.Sensor.Image, err)
	}
	if err := falco.WriteConfig(*outDir, spec.Driver); err != nil {
		return err
	}
	log.Info("Falco configured", "driver", spec.Driver, "attempt", spec.Attempt, "dir", *outDir)
	return nil
}

// Registered here rather than in main.go's map: not in the matrixguest build.
func init() {
	subcommands["falco-config"] = subcommand{runFalcoConfig, "init step of a Falco pod: wait for this node's driver, configure Falco and falcoctl with it"}
}
