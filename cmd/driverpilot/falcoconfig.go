package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/driverpilot/driverpilot/agent/falco"
	"github.com/driverpilot/driverpilot/agent/probe"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
	"github.com/driverpilot/driverpilot/internal/selection"
	"github.com/driverpilot/driverpilot/internal/version"
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
	w := &decisionWaiter{c: c, node: nf.nodeName, profile: nf.profile, prober: probe.New(nf.hostRoot), heartbeat: nf.heartbeat, log: log}
	spec, err := w.wait(ctx)
	if err != nil {
		return err
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

// decisionWaiter reports the node's facts and waits for a driver.
type decisionWaiter struct {
	c         client.WithWatch
	node      string
	profile   string // empty: any profile
	prober    *probe.Prober
	heartbeat time.Duration
	log       logr.Logger
}

func (w *decisionWaiter) wait(ctx context.Context) (v1alpha1.NodeSensorSpec, error) {
	ns := &v1alpha1.NodeSensor{}
	for logged := false; ; {
		err := w.c.Get(ctx, client.ObjectKey{Name: w.node}, ns)
		if err == nil {
			break
		}
		if !logged {
			w.log.Info("Waiting for this node's NodeSensor", "error", err.Error())
			logged = true
		}
		if !sleepCtx(ctx, time.Second) {
			return v1alpha1.NodeSensorSpec{}, errors.Join(ctx.Err(), err)
		}
	}
	facts := w.prober.Probe(ctx, probe.Inputs{})
	if err := w.report(ctx, ns, &facts); err != nil {
		return v1alpha1.NodeSensorSpec{}, err
	}
	w.log.Info("Node probed; waiting for the driver decision", "kernel", facts.Kernel.Release.Value)
	tick := time.NewTicker(w.heartbeat)
	defer tick.Stop()
	for {
		if w.decided(ns) {
			if ns.Spec.Sensor.Kind != v1alpha1.SensorFalco {
				return v1alpha1.NodeSensorSpec{}, fmt.Errorf("node sensor %s is for a %s sensor, not Falco", w.node, ns.Spec.Sensor.Kind)
			}
			return ns.Spec, nil
		}
		wi, err := w.c.Watch(ctx, &v1alpha1.NodeSensorList{}, client.MatchingFields{"metadata.name": w.node})
		if err != nil {
			w.log.Error(err, "Watch failed; retrying")
			if !sleepCtx(ctx, 2*time.Second) {
				return v1alpha1.NodeSensorSpec{}, ctx.Err()
			}
			continue
		}
		err = w.follow(ctx, wi, ns, tick.C)
		wi.Stop()
		if err != nil {
			return v1alpha1.NodeSensorSpec{}, err
		}
	}
}

// decided reports a driver decided by this pod's profile: the pod of a profile that lost the
// node to an older one never configures a second Falco there.
func (w *decisionWaiter) decided(ns *v1alpha1.NodeSensor) bool {
	return ns.Spec.Driver != "" && (w.profile == "" || ns.Spec.Profile == w.profile)
}

// follow returns when the watch closes or a driver is decided.
func (w *decisionWaiter) follow(ctx context.Context, wi watch.Interface, ns *v1alpha1.NodeSensor, tick <-chan time.Time) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-wi.ResultChan():
			if !ok {
				return nil
			}
			if got, isNS := ev.Object.(*v1alpha1.NodeSensor); isNS && ev.Type != watch.Deleted {
				*ns = *got
				if w.decided(ns) {
					return nil
				}
			}
		case <-tick:
			if err := w.report(ctx, ns, nil); err != nil {
				w.log.Error(err, "Heartbeat failed")
			}
		}
	}
}

// report patches the status with the facts (when given) and a heartbeat.
func (w *decisionWaiter) report(ctx context.Context, ns *v1alpha1.NodeSensor, facts *v1alpha1.ProbeFacts) error {
	base := ns.DeepCopy()
	if facts != nil {
		ns.Status.Probe = facts
	}
	now := metav1.Now()
	ns.Status.HeartbeatTime = &now
	ns.Status.AgentVersion = version.Version
	if err := w.c.Status().Patch(ctx, ns, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("patch node sensor status: %w", err)
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Registered here rather than in main.go's map: gofmt would realign every line of that map.
func init() {
	subcommands["falco-config"] = struct {
		run   func(args []string) error
		usage string
	}{runFalcoConfig, "init step of a Falco pod: wait for this node's driver, configure Falco and falcoctl with it"}
}
