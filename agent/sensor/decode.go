package sensor

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/bpf"
)

// eventSize is the size of C struct exec_event; layout_test.go checks it against the object's BTF.
var eventSize = binary.Size(bpf.ExecExecEvent{})

// Decoder turns raw kernel records into Events.
type Decoder struct {
	// wallOffset converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
	wallOffset time.Duration
	driver     v1alpha1.Driver
	now        func() time.Time
}

// NewDecoder returns a decoder for events that came through driver, with the monotonic-to-wall
// clock offset measured now.
func NewDecoder(driver v1alpha1.Driver) (*Decoder, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("read monotonic clock: %w", err)
	}
	wall := time.Now()
	return &Decoder{
		wallOffset: time.Duration(wall.UnixNano() - ts.Nano()),
		driver:     driver,
		now:        time.Now,
	}, nil
}

// Decode decodes one record of struct exec_event (little-endian, as the bpfel object writes it).
// Perf records may carry trailing padding; shorter records are an error.
func (d *Decoder) Decode(raw []byte) (Event, error) {
	if len(raw) < eventSize {
		return Event{}, fmt.Errorf("decode exec event: %d bytes, want %d", len(raw), eventSize)
	}
	var ev bpf.ExecExecEvent
	if _, err := binary.Decode(raw[:eventSize], binary.LittleEndian, &ev); err != nil {
		return Event{}, fmt.Errorf("decode exec event: %w", err)
	}
	return Event{
		Time:      time.Unix(0, int64(ev.KtimeNs)+int64(d.wallOffset)),
		Received:  d.now(),
		PID:       ev.Pid,
		TGID:      ev.Tgid,
		Comm:      cString(ev.Comm[:]),
		Filename:  cString(ev.Filename[:]),
		Flags:     Flags(ev.Flags),
		Method:    Method(ev.Method),
		Agreement: Agreement(ev.Agreement),
		Driver:    d.driver,
		Cgroup:    CgroupNames{Leaf: cString(ev.Cgroup[:]), Parent: cString(ev.CgroupParent[:])},
	}, nil
}

// cString converts a NUL-terminated C char array (int8 in bpf2go's output) to a string.
func cString(chars []int8) string {
	b := make([]byte, len(chars))
	for i, c := range chars {
		b[i] = byte(c)
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
