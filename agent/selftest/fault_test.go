package selftest

import (
	"testing"

	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// chanSensor delivers the events it was given to its one subscriber.
type chanSensor struct{ events []sensor.Event }

func (c chanSensor) Start(v1alpha1.Driver) error { return nil }
func (c chanSensor) Close() error                { return nil }
func (c chanSensor) Subscribe() (<-chan sensor.Event, func()) {
	ch := make(chan sensor.Event, len(c.events))
	for _, ev := range c.events {
		ch <- ev
	}
	close(ch)
	return ch, func() {}
}

func TestFaults(t *testing.T) {
	upper := sensor.Event{Filename: "dp-x-upper", Flags: sensor.FlagOverlay | sensor.FlagUpperLayer | sensor.FlagWritable}
	lower := sensor.Event{Filename: "dp-x-lower", Flags: sensor.FlagOverlay | sensor.FlagLowerLayer}
	memfd := sensor.Event{Filename: "memfd:dp-x-memfd", Flags: sensor.FlagFromMemfd}
	collect := func(s sensor.Sensor) []sensor.Event {
		ch, unsubscribe := s.Subscribe()
		defer unsubscribe()
		var out []sensor.Event
		for ev := range ch {
			out = append(out, ev)
		}
		return out
	}
	base := chanSensor{events: []sensor.Event{upper, lower, memfd}}

	if _, wrapped := WithFault(base, FaultNone).(*faultySensor); wrapped {
		t.Errorf("FaultNone wrapped the sensor")
	}
	got := collect(WithFault(base, FaultAllLower))
	if len(got) != 3 {
		t.Fatalf("all-lower: %d events, want 3", len(got))
	}
	if got[0].UpperLayer() || !got[0].LowerLayer() || !got[0].Flags.Has(sensor.FlagWritable) {
		t.Errorf("all-lower: upper exec reported as %s", got[0].Flags)
	}
	if got[1].Flags != lower.Flags || got[2].Flags != memfd.Flags {
		t.Errorf("all-lower changed a lower or memfd exec: %s, %s", got[1].Flags, got[2].Flags)
	}
	if got := collect(WithFault(base, FaultDropEvents)); len(got) != 0 {
		t.Errorf("drop-events delivered %d events", len(got))
	}

	// The self-test's optional interfaces reach the real sensor through the fault.
	rich := &richSensor{chanSensor: base}
	wrapped := WithFault(rich, FaultAllLower)
	lr, ok := wrapped.(sensor.LowerLayerRequester)
	if !ok {
		t.Fatal("the fault hides sensor.LowerLayerRequester")
	}
	if release, err := lr.RequestLowerLayer(); err != nil || !rich.lower {
		t.Errorf("RequestLowerLayer did not reach the sensor: %v", err)
	} else {
		release()
	}
	if dc, ok := wrapped.(sensor.DropCounter); !ok || dc.Drops().Total() != 3 {
		t.Errorf("the fault hides sensor.DropCounter")
	}
	if _, ok := WithFault(base, FaultAllLower).(sensor.LowerLayerRequester); ok {
		t.Errorf("the fault claims an interface the sensor lacks")
	}

	for _, s := range []string{"", "all-lower", "drop-events"} {
		if _, err := ParseFault(s); err != nil {
			t.Errorf("ParseFault(%q): %v", s, err)
		}
	}
	if _, err := ParseFault("upper"); err == nil {
		t.Error("ParseFault accepted an unknown fault")
	}
}

// richSensor also asks for lower-layer events and counts drops.
type richSensor struct {
	chanSensor
	lower bool
}

func (r *richSensor) RequestLowerLayer() (func(), error) {
	r.lower = true
	return func() { r.lower = false }, nil
}

func (r *richSensor) Drops() sensor.Drops { return sensor.Drops{Kernel: 3} }
