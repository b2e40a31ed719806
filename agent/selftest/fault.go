package selftest

import (
	"fmt"
	"strings"

	"github.com/driverpilot/driverpilot/agent/sensor"
)

// Fault is a deliberate sensor bug the self-test must catch. It exists to prove the self-test on
// real kernels (the kernel matrix runs every fault in at least one cell per kernel generation and
// requires the self-test to fail): a self-test that passed with a faulty sensor would promise
// detection it cannot prove. Faults are reachable only through the hidden environment variable
// FaultEnv of `driverpilot selftest`; the agent never wraps its sensor.
type Fault string

const (
	// FaultNone runs the sensor as it is.
	FaultNone Fault = ""
	// FaultAllLower reports every overlay exec as a lower-layer exec: the falco#3286 class of bug,
	// where a sensor cannot tell an upper-layer exe from an image's own.
	FaultAllLower Fault = "all-lower"
	// FaultDropEvents drops every event before the self-test sees it: a sensor that attached but
	// delivers nothing (a lost ring buffer, a filter that is too strict).
	FaultDropEvents Fault = "drop-events"
)

// FaultEnv names the environment variable `driverpilot selftest` reads a Fault from. It is
// deliberately not a flag: it is a test hook for the kernel matrix, not an option for users.
const FaultEnv = "DRIVERPILOT_SELFTEST_FAULT"

// AllFaults lists every fault, FaultNone excluded.
var AllFaults = []Fault{FaultAllLower, FaultDropEvents}

// ParseFault returns the fault named s ("" is FaultNone).
func ParseFault(s string) (Fault, error) {
	f := Fault(strings.TrimSpace(s))
	if f == FaultNone {
		return FaultNone, nil
	}
	for _, known := range AllFaults {
		if f == known {
			return f, nil
		}
	}
	return FaultNone, fmt.Errorf("unknown fault %q (known: %v)", s, AllFaults)
}

// WithFault wraps s so that its events carry the fault; FaultNone returns s itself. The optional
// interfaces the self-test uses (sensor.LowerLayerRequester, sensor.DropCounter) still reach s:
// a fault must be the only difference, or a failure would prove nothing about the self-test. The
// drops a fault makes are its own and are not counted: that is the bug it plays.
func WithFault(s sensor.Sensor, f Fault) sensor.Sensor {
	if f == FaultNone {
		return s
	}
	fs := &faultySensor{Sensor: s, fault: f}
	lr, requests := s.(sensor.LowerLayerRequester)
	dc, counts := s.(sensor.DropCounter)
	switch {
	case requests && counts:
		return struct {
			*faultySensor
			sensor.LowerLayerRequester
			sensor.DropCounter
		}{fs, lr, dc}
	case requests:
		return struct {
			*faultySensor
			sensor.LowerLayerRequester
		}{fs, lr}
	case counts:
		return struct {
			*faultySensor
			sensor.DropCounter
		}{fs, dc}
	}
	return fs
}

// faultySensor is a decorator: Start and Close go to the real sensor, Subscribe passes every
// event through the fault.
type faultySensor struct {
	sensor.Sensor
	fault Fault
}

func (f *faultySensor) Subscribe() (<-chan sensor.Event, func()) {
	in, unsubscribe := f.Sensor.Subscribe()
	out := make(chan sensor.Event, cap(in))
	go func() {
		defer close(out)
		for ev := range in {
			ev, keep := f.apply(ev)
			if !keep {
				continue
			}
			// Like the real sensor, a subscriber that falls behind loses events.
			select {
			case out <- ev:
			default:
			}
		}
	}()
	return out, unsubscribe
}

// apply returns the event as the faulty sensor reports it, and whether it reports it at all.
func (f *faultySensor) apply(ev sensor.Event) (sensor.Event, bool) {
	switch f.fault {
	case FaultDropEvents:
		return ev, false
	case FaultAllLower:
		if ev.Flags&(sensor.FlagOverlay|sensor.FlagUpperLayer|sensor.FlagLowerLayer) != 0 {
			ev.Flags = ev.Flags&^sensor.FlagUpperLayer | sensor.FlagLowerLayer
		}
	}
	return ev, true
}
