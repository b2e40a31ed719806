package sensor

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

func TestWriteAlert(t *testing.T) {
	ev := Event{
		Time:     time.Date(2026, 11, 27, 7, 30, 0, 123456789, time.UTC),
		PID:      101,
		TGID:     100,
		Comm:     "my_echo",
		Filename: "my_echo",
		Flags:    FlagWritable | FlagUpperLayer | FlagOverlay,
		Method:   MethodInodeOffset,
		Driver:   v1alpha1.DriverModernEBPF,
		Container: Container{ID: "4f1c2b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a",
			PodUID: "0d6a2c31-5b7e-4f19-9c1a-7e2b3d4f5a6b"},
	}
	var buf bytes.Buffer
	if err := WriteAlert(&buf, ev, "node-1"); err != nil {
		t.Fatal(err)
	}
	line := buf.String()
	if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
		t.Fatalf("want exactly one JSON line, got %q", line)
	}
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]any{
		"time":     "2026-11-27T07:30:00.123456789Z",
		"rule":     "Drop and execute new binary in container",
		"priority": "Critical",
		"source":   "syscall",
		"hostname": "node-1",
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, got["time"].(string)); err != nil {
		t.Errorf("time is not RFC3339Nano: %v", err)
	}
	output, _ := got["output"].(string)
	for _, part := range []string{"my_echo", "proc_pid=100", "process=my_echo", "Critical", "container_id=4f1c2b0a9d8e)"} {
		if !strings.Contains(output, part) {
			t.Errorf("output %q lacks %q", output, part)
		}
	}
	tags, _ := got["tags"].([]any)
	if len(tags) == 0 {
		t.Error("no tags")
	}
	fields, _ := got["output_fields"].(map[string]any)
	for key, want := range map[string]any{
		"evt.time":                float64(ev.Time.UnixNano()),
		"proc.exepath":            "my_echo",
		"proc.name":               "my_echo",
		"proc.pid":                float64(100),
		"proc.is_exe_upper_layer": true,
		"proc.is_exe_from_memfd":  false,
		"proc.is_exe_writable":    true,
		"evt.arg.flags":           "EXE_WRITABLE|EXE_UPPER_LAYER",
		"container.id":            "4f1c2b0a9d8e",
		"container.full_id":       ev.Container.ID,
		"k8s.pod.uid":             "0d6a2c31-5b7e-4f19-9c1a-7e2b3d4f5a6b",
	} {
		if fields[key] != want {
			t.Errorf("output_fields[%q] = %v (%T), want %v", key, fields[key], fields[key], want)
		}
	}
}

func TestWriteAlertOnlyUpperLayer(t *testing.T) {
	var buf bytes.Buffer
	for _, f := range []Flags{FlagLowerLayer | FlagOverlay, FlagFromMemfd | FlagWritable} {
		if err := WriteAlert(&buf, Event{Flags: f, Filename: "x"}, "h"); err != nil {
			t.Fatal(err)
		}
	}
	if buf.Len() != 0 {
		t.Errorf("alerts written for non-upper execs: %s", buf.String())
	}
}
