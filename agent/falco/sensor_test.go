package falco

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

func post(t *testing.T, url, body string) int {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func next(t *testing.T, ch <-chan sensor.Event) sensor.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("event stream closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return sensor.Event{}
}

// TestReceiverContract posts documents the way Falco's http_output does and checks what reaches
// a subscriber, what is counted, and that nothing stops the receiver.
func TestReceiverContract(t *testing.T) {
	dir := t.TempDir()
	if err := WriteConfig(dir, v1alpha1.DriverModernEBPF); err != nil {
		t.Fatal(err)
	}
	s := New(Options{Listen: "127.0.0.1:0", ConfigDir: dir})
	if err := s.Start(v1alpha1.DriverModernEBPF); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Start(v1alpha1.DriverModernEBPF); err != nil {
		t.Errorf("second Start with the same driver: %v", err)
	}
	var se *sensor.Error
	if err := s.Start(v1alpha1.DriverKmod); !errors.As(err, &se) || se.Reason != sensor.ReasonDriverNotSupported {
		t.Errorf("Start with another driver: %v", err)
	}
	events, unsubscribe := s.Subscribe()
	defer unsubscribe()
	url := "http://" + s.Addr() + AlertsPath

	for _, tc := range []struct {
		name, body string
		status     int
		file       string // the event that must arrive, "" for none
	}{
		{"Falco's rule", dropAndExecute, 200, "dp-0a1b2c3d-upper"},
		{"another rule", otherRule, 200, ""},
		{"bad JSON", `{"rule": "Drop and execute new binary in container", "output_fields": {`, 400, ""},
		{"not an object", `"hello"`, 400, ""},
		{"partial", dropAndExecuteNoExe, 400, ""},
		{"probe rule after bad ones", probeLower, 200, "dp-0a1b2c3d-lower"},
		{"two documents in one request", probeMemfd + "\n" + dropAndExecuteNoFields, 200, "memfd:dp-0a1b2c3d-memfd"},
	} {
		if got := post(t, url, tc.body); got != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.status)
		}
		if tc.file != "" {
			if ev := next(t, events); ev.Filename != tc.file || ev.Driver != v1alpha1.DriverModernEBPF {
				t.Errorf("%s: event %+v, want %s", tc.name, ev, tc.file)
			}
		}
	}
	if ev := next(t, events); ev.Filename != "dp-0a1b2c3d-copyup" {
		t.Errorf("second document of one request: %+v", ev)
	}
	select {
	case ev := <-events:
		t.Errorf("unexpected event %+v", ev)
	default:
	}
	if resp, err := http.Get(url); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %v %v", resp, err)
	}
	want := Stats{Requests: 7, Events: 4, OtherRules: 1, Invalid: 3}
	if got := s.Stats(); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-events; ok {
		t.Error("subscription still open after Close")
	}
	if _, err := http.Post(url, "application/json", strings.NewReader(dropAndExecute)); err == nil {
		t.Error("receiver still listening after Close")
	}
}

// TestStartRestartsFalcoForAnotherDriver: Falco configured with modern_ebpf, the decision is
// kmod: Start asks for a restart and fails with FalcoRestarting instead of testing a Falco that
// runs the old driver.
func TestStartRestartsFalcoForAnotherDriver(t *testing.T) {
	dir := t.TempDir()
	if err := WriteConfig(dir, v1alpha1.DriverModernEBPF); err != nil {
		t.Fatal(err)
	}
	var asked atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	s := New(Options{Listen: "127.0.0.1:0", ConfigDir: dir, Context: ctx,
		Restart: func(_ context.Context, configured, wanted v1alpha1.Driver) error {
			asked.Store(string(configured) + "->" + string(wanted))
			cancel() // the pod goes away: the agent's context ends
			return nil
		}})
	defer s.Close()
	var se *sensor.Error
	if err := s.Start(v1alpha1.DriverKmod); !errors.As(err, &se) || se.Reason != ReasonFalcoRestarting {
		t.Fatalf("Start: %v, want %s", err, ReasonFalcoRestarting)
	}
	if got := asked.Load(); got != "modern_ebpf->kmod" {
		t.Errorf("restart asked for %v", got)
	}
	if s.Addr() != "" {
		t.Error("receiver started for a Falco that runs another driver")
	}

	noRestart := New(Options{Listen: "127.0.0.1:0", ConfigDir: dir})
	if err := noRestart.Start(v1alpha1.DriverKmod); !errors.As(err, &se) || se.Reason != ReasonFalcoRestarting {
		t.Errorf("Start without a restart function: %v", err)
	}
	if err := New(Options{Listen: "127.0.0.1:0", ConfigDir: t.TempDir()}).Start(v1alpha1.DriverKmod); !errors.As(err, &se) || se.Reason != sensor.ReasonSensorLoadFailed {
		t.Errorf("Start without a configuration: %v", err)
	}
}

// TestStartWaitsForFalcoHealth: Start returns only once Falco's /healthz answers 200, and fails
// (SensorLoadFailed) when it never does.
func TestStartWaitsForFalcoHealth(t *testing.T) {
	var calls atomic.Int32
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if calls.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer health.Close()
	s := New(Options{Listen: "127.0.0.1:0", HealthURL: health.URL + "/healthz"})
	defer s.Close()
	if err := s.Start(v1alpha1.DriverModernEBPF); err != nil {
		t.Fatal(err)
	}
	if calls.Load() < 3 {
		t.Errorf("Start returned after %d health checks, before Falco was healthy", calls.Load())
	}

	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer sick.Close()
	s2 := New(Options{Listen: "127.0.0.1:0", HealthURL: sick.URL, StartTimeout: 1200 * time.Millisecond})
	defer s2.Close()
	var se *sensor.Error
	if err := s2.Start(v1alpha1.DriverModernEBPF); !errors.As(err, &se) || se.Reason != sensor.ReasonSensorLoadFailed || !strings.Contains(err.Error(), "503") {
		t.Errorf("Start against an unhealthy Falco: %v", err)
	}
	if s2.Addr() != "" {
		t.Error("receiver left listening after a failed Start")
	}
}

// TestFalcoDropsAreCounted: Falco's own drop alert (the documented JSON of syscall_event_drops
// with action alert) is counted as the sensor's drops, so a self-test check that misses its event
// while Falco drops is inconclusive, not a failed driver.
func TestFalcoDropsAreCounted(t *testing.T) {
	s := New(Options{Listen: "127.0.0.1:0"})
	if err := s.Start(v1alpha1.DriverModernEBPF); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	url := "http://" + s.Addr() + AlertsPath
	drop := `{"output":"Falco internal: syscall event drop. 7 system calls dropped in last second.","output_fields":{"ebpf_enabled":"1","n_drops":"7","n_drops_buffer":"7","n_drops_bug":"0","n_drops_pf":"0","n_evts":"13973"},"priority":"Critical","rule":"Falco internal: syscall event drop","time":"2020-09-14T07:42:45.946068858Z"}`
	if code := post(t, url, drop); code != http.StatusOK {
		t.Fatalf("drop alert answered %d", code)
	}
	noCount := `{"output":"Falco internal: syscall event drop.","output_fields":{},"priority":"Critical","rule":"Falco internal: syscall event drop","time":"2020-09-14T07:42:46Z"}`
	if code := post(t, url, noCount); code != http.StatusOK {
		t.Fatalf("drop alert without a count answered %d", code)
	}
	var dc sensor.DropCounter = s
	if got := dc.Drops(); got.Sensor != 8 || got.Total() != 8 {
		t.Errorf("drops %+v, want 8 reported by Falco", got)
	}
	if st := s.Stats(); st.Invalid != 0 || st.Events != 0 {
		t.Errorf("a drop alert was taken for an event or an invalid document: %+v", st)
	}
}

// TestFalcoHealth: Health follows Falco's health endpoint between self-tests; one failed answer
// is tolerated, two in a row make the sensor unhealthy, and the receiver stopping is unhealthy.
func TestFalcoHealth(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	falco := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"status": "ok"}`))
	}))
	defer falco.Close()
	s := New(Options{Listen: "127.0.0.1:0", HealthURL: falco.URL + "/healthz"})
	var hc sensor.HealthChecker = s
	if err := hc.Health(); err == nil {
		t.Error("healthy before Start")
	}
	if err := s.Start(v1alpha1.DriverModernEBPF); err != nil {
		t.Fatal(err)
	}
	if err := hc.Health(); err != nil {
		t.Fatalf("healthy Falco reported unhealthy: %v", err)
	}
	healthy.Store(false)
	if err := hc.Health(); err != nil {
		t.Errorf("one failed answer made Falco unhealthy: %v", err)
	}
	err := hc.Health()
	var he *sensor.HealthError
	if !errors.As(err, &he) || he.Reason != ReasonFalcoUnhealthy {
		t.Fatalf("two failed answers: %v, want %s", err, ReasonFalcoUnhealthy)
	}
	healthy.Store(true)
	if err := hc.Health(); err != nil {
		t.Errorf("recovered Falco still unhealthy: %v", err)
	}
	s.Close()
	if err := hc.Health(); !errors.As(err, &he) || he.Reason != sensor.ReasonSensorStopped {
		t.Errorf("after Close: %v, want %s", err, sensor.ReasonSensorStopped)
	}
}
