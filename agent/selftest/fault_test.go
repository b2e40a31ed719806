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

	for _, s := range []string{"", "all-lower", "drop-events"} {
		if _, err := ParseFault(s); err != nil {
			t.Errorf("ParseFault(%q): %v", s, err)
		}
	}
	if _, err := ParseFault("upper"); err == nil {
		t.Error("ParseFault accepted an unknown fault")
	}
}
