package sensor

import (
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// Falco's rule for the drop-and-execute pattern and its metadata (falco_rules.yaml).
const (
	AlertRule     = "Drop and execute new binary in container"
	AlertPriority = "Critical"
	AlertSource   = "syscall"
)

// AlertTags are the tags Falco's rule carries.
var AlertTags = []string{"maturity_stable", "container", "process", "mitre_persistence", "TA0003", "PCI_DSS_11.5.1"}

// Alert is one alert in the JSON shape Falco prints with json_output: true.
type Alert struct {
	Time         time.Time      `json:"time"`
	Rule         string         `json:"rule"`
	Priority     string         `json:"priority"`
	Output       string         `json:"output"`
	Source       string         `json:"source"`
	Tags         []string       `json:"tags"`
	Hostname     string         `json:"hostname"`
	OutputFields map[string]any `json:"output_fields"`
}

// NewAlert builds the alert for an upper-layer exec. The container comes from the process's
// cgroup (Container; "" when it exited first); proc.exepath is the exe's file name, not a full path.
func NewAlert(ev Event, hostname string) Alert {
	// Falco's evt.arg.flags only knows its own bits.
	falcoFlags := ev.Flags &^ FlagOverlay
	containerID := ev.Container.ShortID()
	if ev.Container.ID == "" {
		containerID = "<NA>" // Falco's spelling of a value it could not resolve
	}
	return Alert{
		Time:     ev.Time.UTC(),
		Rule:     AlertRule,
		Priority: AlertPriority,
		Output: fmt.Sprintf("%s: %s Executing binary not part of base image (proc_exepath=%s process=%s proc_pid=%d exe_flags=%s container_id=%s)",
			ev.Time.UTC().Format("15:04:05.000000000"), AlertPriority, ev.Filename, ev.Comm, ev.TGID, falcoFlags, containerID),
		Source:   AlertSource,
		Tags:     AlertTags,
		Hostname: hostname,
		OutputFields: map[string]any{
			"evt.time":                  ev.Time.UnixNano(),
			"proc.exepath":              ev.Filename,
			"proc.name":                 ev.Comm,
			"proc.pid":                  ev.TGID,
			"proc.is_exe_upper_layer":   ev.UpperLayer(),
			"proc.is_exe_from_memfd":    ev.FromMemfd(),
			"proc.is_exe_writable":      ev.Flags.Has(FlagWritable),
			"evt.arg.flags":             falcoFlags.String(),
			"container.id":              containerID,
			"container.full_id":         ev.Container.ID,
			"k8s.pod.uid":               ev.Container.PodUID,
			"driverpilot.driver":        string(ev.Driver),
			"driverpilot.method":        ev.Method.String(),
			"driverpilot.method_agrees": ev.Agreement.String(),
		},
	}
}

// WriteAlert writes the alert for ev as one JSON line when ev is an upper-layer exec, and
// nothing otherwise.
func WriteAlert(w io.Writer, ev Event, hostname string) error {
	if !ev.UpperLayer() {
		return nil
	}
	line, err := json.Marshal(NewAlert(ev, hostname))
	if err != nil {
		return fmt.Errorf("encode alert: %w", err)
	}
	if _, err := w.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("write alert: %w", err)
	}
	return nil
}
