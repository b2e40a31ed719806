package falco

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
)

// Files of the configuration tree, relative to its root (the agent's shared volume).
const (
	// EngineFile's directory is mounted as Falco's /etc/falco/config.d. Falco merges that
	// directory's files in name order and falcoctl's engine-kind-falcoctl.yaml would sort after
	// this one and win, so the directory holds this file only (the loader never writes there).
	EngineFile = "config.d/engine-kind-driverpilot.yaml"
	// FalcoctlFile is mounted as the driver loader's /etc/falcoctl.
	FalcoctlFile = "falcoctl/falcoctl.yaml"
	// RulesFile is mounted into Falco's /etc/falco/rules.d.
	RulesFile = "rules/driverpilot_selftest_rules.yaml"
)

// Rules the sensor reads; every other alert is counted and ignored.
const (
	// DropAndExecuteRule is Falco's rule for an executable that is not part of the image.
	DropAndExecuteRule = "Drop and execute new binary in container"
	// ProbeRule is DriverPilot's rule for its own self-test executions that Falco did not flag
	// as upper layer.
	ProbeRule = "DriverPilot self-test exec"
	// DropRule is Falco's own alert for syscall events its driver dropped (syscall_event_drops
	// actions alert); its n_drops field is counted as the sensor's drops.
	DropRule = "Falco internal: syscall event drop"
)

// DefaultListen is where the agent receives Falco's alerts: the pod's loopback, shared by Falco.
const DefaultListen = "127.0.0.1:2802"

// AlertsPath is the receiver's URL path.
const AlertsPath = "/alerts"

// minVersion is the first Falco with config.d and engine.kind.
var minVersion = kernelversion.Version{Major: 0, Minor: 38}

// withoutEBPF is the first Falco without the legacy ebpf driver.
var withoutEBPF = kernelversion.Version{Major: 0, Minor: 44}

// ErrDriverNotOffered is returned for a driver the Falco version does not have.
var ErrDriverNotOffered = errors.New("driver not offered by this Falco version")

// Offers reports whether Falco version v has driver d (nil version: unknown, assumed yes).
func Offers(v *kernelversion.Version, d v1alpha1.Driver) error {
	if v == nil {
		return nil
	}
	if v.Less(minVersion) {
		return fmt.Errorf("%w: Falco %s has no config.d or engine.kind (0.38.0 and later have)", ErrDriverNotOffered, v)
	}
	if d == v1alpha1.DriverEBPF && !v.Less(withoutEBPF) {
		return fmt.Errorf("%w: Falco %s has no legacy ebpf driver (removed in 0.44.0)", ErrDriverNotOffered, v)
	}
	return nil
}

// engineConfig is the part of falco.yaml this package writes. The per-kind blocks carry Falco's
// defaults (those of falco.yaml and the Helm chart) so a config.d file alone is complete.
type engineConfig struct {
	Engine struct {
		Kind       v1alpha1.Driver `json:"kind"`
		Kmod       *kindBlock      `json:"kmod,omitempty"`
		EBPF       *kindBlock      `json:"ebpf,omitempty"`
		ModernEBPF *kindBlock      `json:"modern_ebpf,omitempty"`
	} `json:"engine"`
	// SyscallEventDrops makes Falco alert on every drop (Falco's default threshold 0.1 hides
	// drops below a tenth of the events): the sensor counts them, and a self-test check without
	// an event while Falco dropped events is inconclusive, not failed.
	SyscallEventDrops *dropsConfig `json:"syscall_event_drops,omitempty"`
}

// dropsConfig is Falco's syscall_event_drops section.
type dropsConfig struct {
	Threshold float64  `json:"threshold"`
	Actions   []string `json:"actions"`
	Rate      float64  `json:"rate"`
	MaxBurst  int      `json:"max_burst"`
}

type kindBlock struct {
	Probe             string `json:"probe,omitempty"`
	BufSizePreset     int    `json:"buf_size_preset"`
	DropFailedExit    bool   `json:"drop_failed_exit"`
	CPUsForEachBuffer int    `json:"cpus_for_each_buffer,omitempty"`
}

// EngineConfig renders the config.d file for driver d.
func EngineConfig(d v1alpha1.Driver) ([]byte, error) {
	var c engineConfig
	c.Engine.Kind = d
	switch d {
	case v1alpha1.DriverKmod:
		c.Engine.Kmod = &kindBlock{BufSizePreset: 4}
	case v1alpha1.DriverEBPF:
		// Where falcoctl links the probe it installs; the pod shares /root/.falco.
		c.Engine.EBPF = &kindBlock{Probe: "${HOME}/.falco/falco-bpf.o", BufSizePreset: 4}
	case v1alpha1.DriverModernEBPF:
		c.Engine.ModernEBPF = &kindBlock{BufSizePreset: 4, CPUsForEachBuffer: 2}
	default:
		return nil, fmt.Errorf("unknown driver %q", d)
	}
	c.SyscallEventDrops = &dropsConfig{Threshold: 0, Actions: []string{"log", "alert"}, Rate: 1, MaxBurst: 10}
	return marshal("Falco engine for the driver DriverPilot decided for this node", c)
}

// falcoctlConfig is falcoctl's driver section.
type falcoctlConfig struct {
	Driver struct {
		Type     []v1alpha1.Driver `json:"type"`
		Name     string            `json:"name"`
		Repos    []string          `json:"repos"`
		Version  string            `json:"version"`
		HostRoot string            `json:"hostRoot"`
	} `json:"driver"`
}

// FalcoctlConfig renders falcoctl's configuration: exactly one driver type, so `falcoctl driver
// install` installs the decided driver and no other (it installs nothing for modern_ebpf).
func FalcoctlConfig(d v1alpha1.Driver) ([]byte, error) {
	var c falcoctlConfig
	c.Driver.Type = []v1alpha1.Driver{d}
	c.Driver.Name = "falco"
	c.Driver.Repos = []string{"https://download.falco.org/driver"}
	// Empty: falcoctl takes the driver version of the image's /usr/src/falco-*.
	c.Driver.Version = ""
	c.Driver.HostRoot = "/host"
	return marshal("falcoctl driver configuration: the driver DriverPilot decided for this node", c)
}

// rules is DriverPilot's Falco rule. Conditions avoid evt.dir (enter events are gone in recent
// drivers) and macros (the user's rules may not define them); an exec enter event carries the
// parent's exepath, never a dp-* name. Priority WARNING keeps it above common minimum priorities.
const rules = `# Written by DriverPilot's agent. Reports DriverPilot's own self-test executions (dp-*) that
# Falco did not flag as upper layer, so the self-test can tell "Falco saw the exec and it is not
# upper layer" from "Falco saw nothing". Upper-layer executions are left to Falco's own rule
# "Drop and execute new binary in container", which is what the self-test proves.
- rule: DriverPilot self-test exec
  desc: An execution of a DriverPilot self-test binary that is not from an overlayfs upper layer.
  condition: >
    evt.type in (execve, execveat) and proc.exepath contains "dp-"
    and not proc.is_exe_upper_layer = true
  output: >
    DriverPilot self-test exec (proc_exepath=%proc.exepath exe_flags=%evt.arg.flags
    is_exe_upper_layer=%proc.is_exe_upper_layer is_exe_from_memfd=%proc.is_exe_from_memfd
    process=%proc.name proc_pid=%proc.pid container_id=%container.id)
  priority: WARNING
  source: syscall
  tags: [driverpilot]
`

// Rules returns DriverPilot's Falco rules file.
func Rules() []byte { return []byte(rules) }

// WriteConfig writes the whole tree under dir for driver d, each file atomically (write, then
// rename), so a reader never sees half a file.
func WriteConfig(dir string, d v1alpha1.Driver) error {
	engine, err := EngineConfig(d)
	if err != nil {
		return err
	}
	falcoctl, err := FalcoctlConfig(d)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{EngineFile, engine}, {FalcoctlFile, falcoctl}, {RulesFile, Rules()}} {
		if err := writeAtomic(filepath.Join(dir, f.name), f.data); err != nil {
			return err
		}
	}
	return nil
}

// ConfiguredDriver reads the driver Falco was configured with from the tree under dir.
func ConfiguredDriver(dir string) (v1alpha1.Driver, error) {
	data, err := os.ReadFile(filepath.Join(dir, EngineFile))
	if err != nil {
		return "", fmt.Errorf("read Falco engine configuration: %w", err)
	}
	var c engineConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		return "", fmt.Errorf("parse %s: %w", EngineFile, err)
	}
	if c.Engine.Kind == "" {
		return "", fmt.Errorf("parse %s: no engine.kind", EngineFile)
	}
	return c.Engine.Kind, nil
}

func marshal(comment string, v any) ([]byte, error) {
	data, err := yaml.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode yaml: %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by DriverPilot's agent from NodeSensor spec.driver: %s.\n", comment)
	b.Write(data)
	return b.Bytes(), nil
}

func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	// Falco runs as root but other readers (the agent's sidecar) may not.
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
