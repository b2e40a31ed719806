//go:build !matrixguest

package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/debug"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/driverpilot/driverpilot/internal/manager"
)

func init() { subcommands["manager"] = subcommand{runManager, "run the controller manager"} }

// managerGCPercent is the manager's GOGC unless the environment sets one.
const managerGCPercent = 50

// runManager runs the controller manager against the cluster of the current kubeconfig.
func runManager(args []string) error {
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	var o manager.Options
	o.Bind(fs)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	if os.Getenv("GOGC") == "" {
		// The manager's live heap is mostly its informer cache, and each pass over a fleet makes
		// garbage of the same order: Go's default (collect at twice the live heap) sets the
		// peak. Collecting at 1.5x keeps a 5000-node fleet's manager near its cache's size for
		// a few percent of a core more; GOGC in the environment overrides it.
		debug.SetGCPercent(managerGCPercent)
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	mgr, err := manager.New(cfg, o)
	if err != nil {
		return err
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}
