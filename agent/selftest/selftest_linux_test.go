package selftest

import (
	"context"
	"encoding/json"
	"os"
	"testing"

	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

func TestQuick(t *testing.T) {
	for _, d := range []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF} {
		s := sensor.NewBuiltin(sensor.Options{Alerts: os.Stdout})
		st := Run(context.Background(), s, Options{Driver: d, WorkDir: t.TempDir()})
		s.Close()
		b, _ := json.MarshalIndent(st, "", "  ")
		t.Logf("%s", b)
	}
}
