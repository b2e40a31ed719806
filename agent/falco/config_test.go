package falco

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
)

// TestWriteConfigOneDriver: the engine file and falcoctl's file name the same one driver, and
// the driver read back is the one written.
func TestWriteConfigOneDriver(t *testing.T) {
	for _, d := range v1alpha1.AllDrivers {
		dir := t.TempDir()
		if err := WriteConfig(dir, d); err != nil {
			t.Fatal(err)
		}
		got, err := ConfiguredDriver(dir)
		if err != nil || got != d {
			t.Errorf("%s: read back %q, %v", d, got, err)
		}
		var engine map[string]map[string]any
		readYAML(t, filepath.Join(dir, EngineFile), &engine)
		if engine["engine"]["kind"] != string(d) || engine["engine"][string(d)] == nil || len(engine["engine"]) != 2 {
			t.Errorf("%s: engine %v, want kind and only its own block", d, engine)
		}
		var fctl falcoctlConfig
		readYAML(t, filepath.Join(dir, FalcoctlFile), &fctl)
		if len(fctl.Driver.Type) != 1 || fctl.Driver.Type[0] != d || fctl.Driver.HostRoot != "/host" {
			t.Errorf("%s: falcoctl driver %+v", d, fctl.Driver)
		}
		var rules []map[string]any
		readYAML(t, filepath.Join(dir, RulesFile), &rules)
		if len(rules) != 1 || rules[0]["rule"] != ProbeRule || !strings.Contains(rules[0]["condition"].(string), "not proc.is_exe_upper_layer = true") {
			t.Errorf("rules %v", rules)
		}
		if entries, _ := os.ReadDir(filepath.Join(dir, "config.d")); len(entries) != 1 {
			t.Errorf("config.d holds %d entries, want only the engine file", len(entries))
		}
	}
	if err := WriteConfig(t.TempDir(), "vmlinux"); err == nil {
		t.Error("unknown driver written")
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestOffers(t *testing.T) {
	v := func(s string) *kernelversion.Version {
		x, err := kernelversion.ParseSemver(s)
		if err != nil {
			t.Fatal(err)
		}
		return &x
	}
	for _, tc := range []struct {
		version *kernelversion.Version
		driver  v1alpha1.Driver
		ok      bool
	}{
		{v("0.38.1"), v1alpha1.DriverEBPF, true},
		{v("0.42.1"), v1alpha1.DriverEBPF, true},
		{v("0.44.0"), v1alpha1.DriverEBPF, false},
		{v("0.44.0"), v1alpha1.DriverKmod, true},
		{v("0.44.0"), v1alpha1.DriverModernEBPF, true},
		{v("0.37.1"), v1alpha1.DriverModernEBPF, false},
		{nil, v1alpha1.DriverEBPF, true},
	} {
		err := Offers(tc.version, tc.driver)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrDriverNotOffered)) {
			t.Errorf("Offers(%v, %s) = %v, want ok %v", tc.version, tc.driver, err, tc.ok)
		}
	}
}
