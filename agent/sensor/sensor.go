package sensor

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// Sensor is an exec sensor the self-test can drive.
type Sensor interface {
	// Start loads and attaches the sensor with driver. Starting a running sensor with the same
	// driver is a no-op; a different driver is an error. Failures are *Error values.
	Start(driver v1alpha1.Driver) error
	// Subscribe returns a channel of the exec events seen from now on and a function that ends
	// the subscription. A subscriber that falls behind loses events; it is never waited for.
	Subscribe() (events <-chan Event, unsubscribe func())
	// Close detaches the sensor and closes every subscription.
	Close() error
}

// DropCounter is a sensor that counts the events it lost. The self-test reads it before and
// after a run: a check that saw no event while events were being lost proves nothing about the
// driver, so such a run is inconclusive rather than failed.
type DropCounter interface {
	// Drops returns the events lost since the sensor was created (monotonic counters).
	Drops() Drops
}

// HealthChecker is a sensor that can tell, between self-tests, whether it still works.
type HealthChecker interface {
	// Health returns nil while the sensor runs and takes its events, else a *HealthError.
	Health() error
}

// LowerLayerRequester is a sensor that drops lower-layer overlay execs unless asked for them:
// the self-test asks while it runs, because its lower-layer check needs the event.
type LowerLayerRequester interface {
	// RequestLowerLayer makes the sensor report lower-layer execs until release is called.
	RequestLowerLayer() (release func(), err error)
}

// AllExecsReporter is a sensor that reports an exec of a dp-* executable on any filesystem
// (Falco, with DriverPilot's rule). Between self-tests the agent proves such a sensor's event
// flow, from the driver to the agent, with an exec of its own (selftest.ExecAlive); the built-in
// sensor filters those execs in the kernel and is watched through HealthChecker alone.
type AllExecsReporter interface {
	ReportsAllExecs() bool
}

// Drops count lost events by where they were lost.
type Drops struct {
	// Kernel is events the kernel program had no buffer room for (ring buffer output failures,
	// perf lost samples).
	Kernel uint64
	// User is events user space did not pass on: a full subscriber channel, an undecodable record.
	User uint64
	// Sensor is drops the sensor reported about itself (Falco's syscall event drop alerts).
	Sensor uint64
}

// Total is the sum of every kind of drop.
func (d Drops) Total() uint64 { return d.Kernel + d.User + d.Sensor }

// Sub returns the drops since an earlier reading.
func (d Drops) Sub(earlier Drops) Drops {
	return Drops{Kernel: d.Kernel - earlier.Kernel, User: d.User - earlier.User, Sensor: d.Sensor - earlier.Sensor}
}

func (d Drops) String() string {
	var parts []string
	if d.Kernel > 0 {
		parts = append(parts, fmt.Sprintf("%d in the kernel (buffer full)", d.Kernel))
	}
	if d.User > 0 {
		parts = append(parts, fmt.Sprintf("%d in user space (subscriber full or undecodable)", d.User))
	}
	if d.Sensor > 0 {
		parts = append(parts, fmt.Sprintf("%d reported by the sensor", d.Sensor))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// Reasons carried by *HealthError.
const (
	// ReasonSensorStopped: the sensor is not running (never started, closed, or failed to start).
	ReasonSensorStopped = "SensorStopped"
	// ReasonReaderStopped: the built-in sensor's event reader ended (an error or a panic).
	ReasonReaderStopped = "ReaderStopped"
	// ReasonReaderStalled: the event reader is stuck on one record (a blocked alert output).
	ReasonReaderStalled = "ReaderStalled"
)

// HealthError says why a running sensor no longer works.
type HealthError struct {
	// Reason is a CamelCase reason (the Reason constants here, or a sensor's own).
	Reason string
	// Err is the cause.
	Err error
}

func (e *HealthError) Error() string { return fmt.Sprintf("%s: %v", e.Reason, e.Err) }

func (e *HealthError) Unwrap() error { return e.Err }

// Reasons carried by *Error, in the CamelCase form the self-test reports.
const (
	ReasonDriverNotSupported = "DriverNotSupported"
	ReasonSensorLoadFailed   = "SensorLoadFailed"
	ReasonSensorAttachFailed = "SensorAttachFailed"
)

// ErrDriverNotSupported is wrapped by Start when the sensor does not implement the driver.
var ErrDriverNotSupported = errors.New("driver not supported by this sensor")

// Error is a sensor start failure with a reason for the self-test's status.
type Error struct {
	// Reason is one of the Reason constants.
	Reason string
	// Driver is the driver that was being started.
	Driver v1alpha1.Driver
	// Err is the cause; for a rejected program it wraps an *ebpf.VerifierError.
	Err error
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: driver %s: %v", e.Reason, e.Driver, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// VerifierLogTail returns the last lines of the verifier log wrapped in err (at most n lines),
// or "" when err holds no verifier log.
func VerifierLogTail(err error, n int) string {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) || len(ve.Log) == 0 {
		return ""
	}
	log := ve.Log
	if len(log) > n {
		log = log[len(log)-n:]
	}
	return strings.Join(log, "\n")
}

// Flags are the exe flags the kernel computed, bit for bit as in bpf/exec.bpf.c (enum exe_flag).
type Flags uint32

const (
	FlagWritable   Flags = 1 << 0
	FlagUpperLayer Flags = 1 << 1
	FlagFromMemfd  Flags = 1 << 2
	FlagLowerLayer Flags = 1 << 3
	// FlagOverlay marks an exe on overlayfs; it is DriverPilot's own and not part of Falco's flags.
	FlagOverlay Flags = 1 << 4
)

var flagNames = []struct {
	flag Flags
	name string
}{
	{FlagWritable, "EXE_WRITABLE"},
	{FlagUpperLayer, "EXE_UPPER_LAYER"},
	{FlagFromMemfd, "EXE_FROM_MEMFD"},
	{FlagLowerLayer, "EXE_LOWER_LAYER"},
	{FlagOverlay, "EXE_OVERLAY"},
}

// Has reports whether every bit of f2 is set.
func (f Flags) Has(f2 Flags) bool { return f&f2 == f2 }

// String joins the flag names with "|" the way Falco prints evt.arg.flags; "0" when none is set.
func (f Flags) String() string {
	var names []string
	for _, fn := range flagNames {
		if f&fn.flag != 0 {
			names = append(names, fn.name)
			f &^= fn.flag
		}
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("0x%x", uint32(f)))
	}
	if len(names) == 0 {
		return "0"
	}
	return strings.Join(names, "|")
}

// Method is how the kernel program decided upper vs lower layer.
type Method uint8

const (
	// MethodNone: not an overlay exe (a memfd).
	MethodNone Method = 0
	// MethodCORE: struct ovl_inode's __upperdentry resolved through CO-RE.
	MethodCORE Method = 1
	// MethodInodeOffset: the pointer after the embedded struct inode (overlay types not in BTF).
	MethodInodeOffset Method = 2
)

func (m Method) String() string {
	switch m {
	case MethodNone:
		return ""
	case MethodCORE:
		return "CORE"
	case MethodInodeOffset:
		return "InodeOffset"
	}
	return fmt.Sprintf("Method(%d)", uint8(m))
}

// Agreement says whether both methods ran and agreed.
type Agreement uint8

const (
	// AgreementSingle: only one method could run (overlay types missing from BTF, or not overlay).
	AgreementSingle Agreement = 0
	// AgreementAgree: CORE and InodeOffset ran and agreed.
	AgreementAgree Agreement = 1
	// AgreementDisagree: CORE and InodeOffset ran and disagreed; CORE decided.
	AgreementDisagree Agreement = 2
)

func (a Agreement) String() string {
	switch a {
	case AgreementSingle:
		return "SingleMethod"
	case AgreementAgree:
		return "Agree"
	case AgreementDisagree:
		return "Disagree"
	}
	return fmt.Sprintf("Agreement(%d)", uint8(a))
}

// Event is one overlay or memfd exec seen by the kernel program.
type Event struct {
	// Time is when the kernel saw the exec (wall clock).
	Time time.Time
	// Received is when user space took the event from the kernel buffer (the batch it came in).
	Received time.Time
	// PID is the thread id, TGID the process id.
	PID, TGID uint32
	// Comm is the task's command name after the exec.
	Comm string
	// Filename is the exe's dentry name (not a path; at most 63 bytes).
	Filename  string
	Flags     Flags
	Method    Method
	Agreement Agreement
	// Driver is the driver the event came through.
	Driver v1alpha1.Driver
	// Cgroup names the task's cgroup at the exec, read in the kernel.
	Cgroup CgroupNames
	// Container is where the process ran; resolved only for events that alert.
	Container Container
}

// UpperLayer reports whether the exe came from an overlayfs upper layer.
func (e Event) UpperLayer() bool { return e.Flags.Has(FlagUpperLayer) }

// LowerLayer reports whether the exe came from an overlayfs lower layer.
func (e Event) LowerLayer() bool { return e.Flags.Has(FlagLowerLayer) }

// FromMemfd reports whether the exe is a memfd.
func (e Event) FromMemfd() bool { return e.Flags.Has(FlagFromMemfd) }
