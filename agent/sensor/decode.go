package sensor

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/bpf"
)

// Offsets of C struct exec_event's members, taken from its Go twin; bpf/layout_test.go checks
// the twin against the object's BTF. A record holds the members before names and then only the
// bytes of names in use: the cgroup's name, its parent's and the filename, packed in that order
// (cgroup_len + cgroup_parent_len + filename_len bytes).
var (
	offKtime       = int(unsafe.Offsetof(bpf.ExecExecEvent{}.KtimeNs))
	offPid         = int(unsafe.Offsetof(bpf.ExecExecEvent{}.Pid))
	offTgid        = int(unsafe.Offsetof(bpf.ExecExecEvent{}.Tgid))
	offFlags       = int(unsafe.Offsetof(bpf.ExecExecEvent{}.Flags))
	offCPU         = int(unsafe.Offsetof(bpf.ExecExecEvent{}.Cpu))
	offCached      = int(unsafe.Offsetof(bpf.ExecExecEvent{}.CgroupCached))
	offMethod      = int(unsafe.Offsetof(bpf.ExecExecEvent{}.Method))
	offAgreement   = int(unsafe.Offsetof(bpf.ExecExecEvent{}.Agreement))
	offFilenameLen = int(unsafe.Offsetof(bpf.ExecExecEvent{}.FilenameLen))
	offCgroupLen   = int(unsafe.Offsetof(bpf.ExecExecEvent{}.CgroupLen))
	offParentLen   = int(unsafe.Offsetof(bpf.ExecExecEvent{}.CgroupParentLen))
	offComm        = int(unsafe.Offsetof(bpf.ExecExecEvent{}.Comm))
	commLen        = len(bpf.ExecExecEvent{}.Comm)
	offNames       = int(unsafe.Offsetof(bpf.ExecExecEvent{}.Names))
	namesLen       = len(bpf.ExecExecEvent{}.Names)
)

// decodeNamesSize is how many distinct cgroup names a Decoder keeps (a node runs a few hundred
// containers at most; past it the set starts again).
const decodeNamesSize = 512

// maxCPUs bounds the CPU numbers a Decoder keeps cgroup names for.
const maxCPUs = 1 << 14

// Decoder turns raw kernel records into Events. It is not safe for concurrent use: the sensor's
// one reader owns it.
type Decoder struct {
	// wallOffset converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
	wallOffset time.Duration
	driver     v1alpha1.Driver
	now        func() time.Time
	// names interns the names events carry: every exec in a container carries the same cgroup
	// names, and the same binary the same comm and filename; a string allocated once per name
	// instead of four per event keeps the reader's cost down.
	names map[string]string
	// cpuCgroup holds, per CPU, the cgroup names of the last record from that CPU that carried
	// them: a record whose cgroup_cached is set left them out (bpf/exec.bpf.c).
	cpuCgroup []CgroupNames
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

// Decode decodes one record of struct exec_event (little-endian, as the bpfel object writes it):
// the members before names, then the names in use; a record that left its cgroup names out gets
// those of the last record from its CPU that had them. Records must come in the order each CPU
// sent them (both kernel buffers keep it). Perf records may carry trailing padding; a
// record shorter than its names say is an error.
func (d *Decoder) Decode(raw []byte) (Event, error) {
	return d.decodeAt(raw, d.now())
}

// decodeAt is Decode with the time the record was read.
func (d *Decoder) decodeAt(raw []byte, received time.Time) (Event, error) {
	if len(raw) < offNames {
		return Event{}, fmt.Errorf("decode exec event: %d bytes, want at least %d", len(raw), offNames)
	}
	le := binary.LittleEndian
	cpu := int(le.Uint32(raw[offCPU:]))
	if cpu >= maxCPUs {
		d.cpuCgroup = nil // nothing kept can be trusted after a record that makes no sense
		return Event{}, fmt.Errorf("decode exec event: CPU %d", cpu)
	}
	cl, pl, fl := int(raw[offCgroupLen]), int(raw[offParentLen]), int(raw[offFilenameLen])
	if cl+pl+fl > namesLen {
		d.cpuCgroup = nil // lengths the kernel cannot write: its CPU number is no more trustworthy
		return Event{}, fmt.Errorf("decode exec event: names of %d+%d+%d bytes, more than %d", cl, pl, fl, namesLen)
	}
	if len(raw) < offNames+cl+pl+fl {
		// A truncated record: the names it may have carried are lost, so its CPU's next records
		// that leave them out have none. The other CPUs' names still hold.
		if cpu < len(d.cpuCgroup) {
			d.cpuCgroup[cpu] = CgroupNames{}
		}
		return Event{}, fmt.Errorf("decode exec event: %d bytes, names of %d+%d+%d bytes after %d", len(raw), cl, pl, fl, offNames)
	}
	names := raw[offNames:]
	var cgroup CgroupNames
	if raw[offCached] != 0 {
		if cpu < len(d.cpuCgroup) {
			cgroup = d.cpuCgroup[cpu]
		}
	} else {
		cgroup = CgroupNames{Leaf: d.intern(names[:cl]), Parent: d.intern(names[cl : cl+pl])}
		if cpu >= len(d.cpuCgroup) {
			d.cpuCgroup = append(d.cpuCgroup, make([]CgroupNames, cpu+1-len(d.cpuCgroup))...)
		}
		d.cpuCgroup[cpu] = cgroup
	}
	return Event{
		Time:      time.Unix(0, int64(le.Uint64(raw[offKtime:]))+int64(d.wallOffset)),
		Received:  received,
		PID:       le.Uint32(raw[offPid:]),
		TGID:      le.Uint32(raw[offTgid:]),
		Comm:      d.intern(raw[offComm : offComm+commLen]),
		Filename:  d.intern(names[cl+pl : cl+pl+fl]),
		Flags:     Flags(le.Uint32(raw[offFlags:])),
		Method:    Method(raw[offMethod]),
		Agreement: Agreement(raw[offAgreement]),
		Driver:    d.driver,
		Cgroup:    cgroup,
	}, nil
}

// intern returns the string of the C string b (all of b without a NUL), allocated once per
// distinct name while the set has room.
func (d *Decoder) intern(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	if len(b) == 0 {
		return ""
	}
	if s, ok := d.names[string(b)]; ok { // no allocation for the lookup
		return s
	}
	if d.names == nil || len(d.names) >= decodeNamesSize {
		d.names = make(map[string]string, decodeNamesSize)
	}
	s := string(b)
	d.names[s] = s
	return s
}
