package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/driverpilot/driverpilot/internal/version"
)

// upgradeVersion is the version of the manager and agents the -upgrade mode moves to.
func upgradeVersion() string { return version.Version + "+1" }

// buildUpgradeManager builds the manager a second time, as version upgradeVersion().
func buildUpgradeManager(ctx context.Context, root, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", "-X github.com/driverpilot/driverpilot/internal/version.Version="+upgradeVersion(),
		"-o", out, "./cmd/driverpilot")
	cmd.Dir, cmd.Stdout, cmd.Stderr = root, os.Stderr, os.Stderr
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd.Run()
}

// upgradeResult is what the -upgrade mode measured.
type upgradeResult struct {
	version      string
	from, to     time.Time // the old manager's stop; every node verified again (zero: never)
	started      time.Duration
	proven, left int
	leftAt       []string
	leftWhy      map[string]int // the condition (status/reason) nodes left Verified for
	hwm          int64
	cpu          float64
}

// runUpgrade replaces the manager with the upgraded build and, at the same moment, every agent
// with one of the new version (as if the new DaemonSet template replaced every agent pod), then
// waits until every node is verified again by the new version. It returns the new manager,
// running, for the caller to stop.
func runUpgrade(ctx context.Context, o options, old *managerProc, bin, kubeconfig, tmp string, s *sim) (upgradeResult, *managerProc, error) {
	r := upgradeResult{version: upgradeVersion()}
	done := s.obs.startUpgrade(r.version)
	r.from = time.Now()
	old.stop()
	s.SetAgentVersion(r.version)
	dir := filepath.Join(tmp, "upgrade")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return r, nil, err
	}
	mgr, err := startManager(ctx, bin, kubeconfig, dir, o.managerArgs)
	if err != nil {
		return r, nil, err
	}
	if err := mgr.waitStarted(ctx, time.Minute); err != nil {
		return r, mgr, err
	}
	r.started = time.Since(r.from)
	logf("upgrade to %s: old manager stopped, agents report the new version, new manager running after %.1fs", r.version, r.started.Seconds())
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-ctx.Done():
			break wait
		case <-tick.C:
			proven, left, _, _, _ := s.obs.upgradeSnap()
			logf("upgrade t+%4.1fs: %d nodes proven by %s, %d left Verified, manager VmHWM %s",
				time.Since(r.from).Seconds(), proven, r.version, left, mib(mgr.mem.hwm.Load()))
		}
	}
	r.proven, r.left, r.leftAt, r.leftWhy, r.to = s.obs.upgradeSnap()
	r.hwm, r.cpu = mgr.mem.final(), mgr.cpuSeconds()
	if r.to.IsZero() {
		return r, mgr, fmt.Errorf("upgrade: %d of %d nodes verified again by %s before: %w", r.proven, o.nodes, r.version, context.Cause(ctx))
	}
	logf("upgrade: every node verified again by %s after %.2fs; %d left Verified on the way", r.version, r.to.Sub(r.from).Seconds(), r.left)
	return r, mgr, nil
}
