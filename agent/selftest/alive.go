package selftest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/driverpilot/driverpilot/agent/sensor"
)

// ErrNoAliveEvent says the sensor reported nothing for the liveness exec within the timeout.
var ErrNoAliveEvent = errors.New("no event for the liveness exec")

// ExecAlive proves that events still flow from the driver to the agent between self-tests: it
// writes the helper binary into dir as dp-alive-<random>, executes it, and waits up to timeout
// for the sensor's event of that name. It returns the time from the exec to the event. Only for
// sensors that report execs on any filesystem (Falco with DriverPilot's rule, which fires for
// every dp-* exec): the built-in sensor filters ordinary and lower-layer execs in the kernel.
func ExecAlive(ctx context.Context, s sensor.Sensor, dir string, timeout time.Duration) (time.Duration, error) {
	helper, err := helperBinary()
	if err != nil {
		return 0, err
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return 0, fmt.Errorf("random name: %w", err)
	}
	name := "dp-alive-" + hex.EncodeToString(rnd[:])
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, helper, 0o755); err != nil {
		return 0, fmt.Errorf("write liveness exec: %w", err)
	}
	defer os.Remove(path)
	events, unsubscribe := s.Subscribe()
	defer unsubscribe()

	start := time.Now()
	if err := exec.CommandContext(ctx, path).Run(); err != nil {
		return 0, fmt.Errorf("run liveness exec %s: %w", path, err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return 0, fmt.Errorf("%w: the sensor closed its event stream", ErrNoAliveEvent)
			}
			if ev.Filename == name {
				return time.Since(start), nil
			}
		case <-timer.C:
			return 0, fmt.Errorf("%w %s within %s", ErrNoAliveEvent, name, timeout)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}
