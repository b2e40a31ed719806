// Command falcoemu stands in for Falco in the end-to-end test of the Falco sensor: it runs the
// built-in eBPF sensor and POSTs each self-test exec to the agent's receiver as Falco's
// http_output would, in Falco's JSON alert format: upper-layer execs as Falco's rule "Drop and
// execute new binary in container", the other dp-* execs as DriverPilot's rule (the rules file
// the agent's init step gives Falco). It serves Falco's /healthz once the sensor runs.
// With -drop-upper it drops the upper-layer alerts: a Falco that misses the upper layer.
// Unlike Falco it cannot see execs of ordinary files (the built-in sensor filters them in the
// kernel), so the agent's liveness exec, every 60s by default, goes unanswered when the agent's
// work directory is not an overlay: a test must finish within that time.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf/rlimit"

	"github.com/driverpilot/driverpilot/agent/falco"
	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

func main() {
	url := flag.String("url", "http://"+falco.DefaultListen+falco.AlertsPath, "where to POST alerts (the agent's receiver)")
	health := flag.String("health", "127.0.0.1:8765", "address of the /healthz endpoint")
	driver := flag.String("driver", string(v1alpha1.DriverModernEBPF), "driver of the built-in sensor")
	dropUpper := flag.Bool("drop-upper", false, "drop upper-layer alerts")
	flag.Parse()
	if err := run(*url, *health, v1alpha1.Driver(*driver), *dropUpper); err != nil {
		fmt.Fprintln(os.Stderr, "falcoemu:", err)
		os.Exit(1)
	}
}

func run(url, health string, driver v1alpha1.Driver, dropUpper bool) error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("memlock: %w", err)
	}
	s := sensor.NewBuiltin(sensor.Options{Hostname: "falcoemu"})
	defer s.Close()
	events, unsubscribe := s.Subscribe()
	defer unsubscribe()
	if err := s.Start(driver); err != nil {
		return fmt.Errorf("start sensor: %w", err)
	}
	// Falco sees every exec; the built-in sensor filters lower-layer ones unless asked.
	release, err := s.RequestLowerLayer()
	if err != nil {
		return fmt.Errorf("ask for lower-layer events: %w", err)
	}
	defer release()
	var up atomic.Bool
	up.Store(true)
	go func() {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if up.Load() {
				w.WriteHeader(http.StatusOK)
				return
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		})
		fmt.Fprintln(os.Stderr, "falcoemu: health:", http.ListenAndServe(health, mux))
	}()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	client := &http.Client{Timeout: 2 * time.Second}
	fmt.Fprintln(os.Stderr, "falcoemu: running")
	for {
		select {
		case <-stop:
			return nil
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("sensor closed its events")
			}
			var alert any
			switch {
			case ev.UpperLayer() && dropUpper:
				fmt.Fprintln(os.Stderr, "falcoemu: dropped upper-layer alert for", ev.Filename)
				continue
			case ev.UpperLayer():
				alert = sensor.NewAlert(ev, "falcoemu")
			case strings.Contains(ev.Filename, "dp-"):
				alert = probeAlert(ev)
			default:
				continue
			}
			body, err := json.Marshal(alert)
			if err != nil {
				return fmt.Errorf("encode alert: %w", err)
			}
			resp, err := client.Post(url, "application/json", bytes.NewReader(body))
			if err != nil {
				fmt.Fprintln(os.Stderr, "falcoemu: post:", err)
				continue
			}
			resp.Body.Close()
		}
	}
}

// probeAlert is what Falco prints for DriverPilot's rule (agent/falco's rules file).
func probeAlert(ev sensor.Event) map[string]any {
	flags := ev.Flags &^ sensor.FlagOverlay
	return map[string]any{
		"time":     ev.Time.UTC().Format(time.RFC3339Nano),
		"rule":     falco.ProbeRule,
		"priority": "Warning",
		"source":   "syscall",
		"tags":     []string{"driverpilot"},
		"hostname": "falcoemu",
		"output": fmt.Sprintf("DriverPilot self-test exec (proc_exepath=%s exe_flags=%s is_exe_upper_layer=false is_exe_from_memfd=%t process=%s proc_pid=%d container_id=host)",
			ev.Filename, flags, ev.FromMemfd(), ev.Comm, ev.TGID),
		"output_fields": map[string]any{
			"proc.exepath":            ev.Filename,
			"evt.arg.flags":           flags.String(),
			"proc.is_exe_upper_layer": false,
			"proc.is_exe_from_memfd":  ev.FromMemfd(),
			"proc.name":               ev.Comm,
			"proc.pid":                ev.TGID,
			"container.id":            "host",
		},
	}
}
