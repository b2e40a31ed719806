package sensor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/perf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/bpf"
)

// Options configure the built-in sensor.
type Options struct {
	// Alerts receives one Falco-shaped JSON line per upper-layer exec; nil disables alerts.
	Alerts io.Writer
	// Hostname goes into alerts; empty means os.Hostname.
	Hostname string
	// SubscriberBuffer is each subscription's channel capacity (default 1024).
	SubscriberBuffer int
	// PerfBufferBytes is the per-CPU perf buffer of the ebpf driver (default 64 KiB).
	PerfBufferBytes int
	// ProcRoot is where the host's /proc is visible ("/proc"; "/host/proc" in the agent pod), to
	// name the container of an alerting process.
	ProcRoot string
	// PerfWakeupEvents is how many events a per-CPU perf buffer collects before it wakes the
	// reader; by default a buffer wakes it once half full (a watermark in bytes: records are 80 to
	// 310 bytes long). The flush interval reads the rest. A wakeup costs the kernel an irq_work
	// self-IPI and the reader a round of epoll_wait and handing events on, tens of microseconds on
	// a VM: the fewer per event the better, as long as the buffer has room while the reader wakes.
	PerfWakeupEvents int
	// RingBufferBytes is the modern_ebpf driver's ring buffer size, a power of two of at least a
	// page (default 256 KiB).
	RingBufferBytes int
	// FlushInterval is the longest an event waits in a kernel buffer before the reader takes it
	// (default 100ms): the kernel does not wake the reader per event (bpf/exec.bpf.c), so this
	// bounds the detection latency.
	FlushInterval time.Duration
	// StallAfter is how long the reader may spend on one record (delivering it, writing its
	// alert) before Health reports it stalled (default 5s).
	StallAfter time.Duration
	// ForceInodeOffset skips the CO-RE method, as on a kernel whose BTF lacks overlay's types
	// (falco#3286), so the InodeOffset method decides. For tests and diagnostics.
	ForceInodeOffset bool
}

// Builtin is DriverPilot's own exec sensor: bpf/exec.bpf.c with the program and map that match
// the driver (modern_ebpf: tp_btf + ring buffer; ebpf: raw_tp + perf event array). kmod is
// not offered.
type Builtin struct {
	opts Options

	mu       sync.Mutex
	driver   v1alpha1.Driver
	closers  []io.Closer // in close order
	reader   recordReader
	settings *ebpf.Map // settings[0]: enum setting_flag bits
	counters *ebpf.Map // per-CPU enum counter values
	lowerReq int       // holders of RequestLowerLayer
	subs     map[int]chan Event
	nextSub  int
	closed   bool
	readDone chan struct{}
	readErr  error
	alertErr error

	lost    atomic.Uint64 // samples the kernel could not deliver (perf lost records)
	dropped atomic.Uint64 // events a slow subscriber did not take, or that did not decode
	// lastRead is when the reader last came back from the kernel buffer (unix nanoseconds); it
	// comes back at least every FlushInterval while it is alive and not stuck on a record.
	lastRead atomic.Int64
	// readerTID is the thread the reader runs on (locked to it), whose CPU time ReaderStats
	// reports.
	readerTID atomic.Int64
}

var _ Sensor = (*Builtin)(nil)

// NewBuiltin returns a built-in sensor that is not started yet.
func NewBuiltin(opts Options) *Builtin {
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	if opts.ProcRoot == "" {
		opts.ProcRoot = "/proc"
	}
	if opts.SubscriberBuffer <= 0 {
		opts.SubscriberBuffer = 1024
	}
	if opts.PerfBufferBytes <= 0 {
		opts.PerfBufferBytes = 64 << 10
	}
	if opts.RingBufferBytes <= 0 {
		opts.RingBufferBytes = 256 << 10
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 100 * time.Millisecond
	}
	if opts.StallAfter <= 0 {
		opts.StallAfter = 5 * time.Second
	}
	return &Builtin{opts: opts, subs: map[int]chan Event{}}
}

// modernObjects and legacyObjects select the one program and map each driver loads; the other
// pair in the object is never created (a kernel without ring buffers can still run ebpf).
type modernObjects struct {
	Prog     *ebpf.Program `ebpf:"dp_exec_tp_btf"`
	Events   *ebpf.Map     `ebpf:"events_rb"`
	Settings *ebpf.Map     `ebpf:"settings"`
	Counters *ebpf.Map     `ebpf:"counters"`
}

type legacyObjects struct {
	Prog     *ebpf.Program `ebpf:"dp_exec_raw_tp"`
	Events   *ebpf.Map     `ebpf:"events_perf"`
	Settings *ebpf.Map     `ebpf:"settings"`
	Counters *ebpf.Map     `ebpf:"counters"`
}

// Start loads and attaches the program for driver and starts reading its events.
func (b *Builtin) Start(driver v1alpha1.Driver) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("sensor is closed")
	}
	if b.reader != nil {
		if b.driver == driver {
			return nil
		}
		return fmt.Errorf("sensor already running with driver %s", b.driver)
	}
	if driver != v1alpha1.DriverModernEBPF && driver != v1alpha1.DriverEBPF {
		return &Error{Reason: ReasonDriverNotSupported, Driver: driver,
			Err: fmt.Errorf("%w: the built-in sensor offers modern_ebpf and ebpf", ErrDriverNotSupported)}
	}
	dec, err := NewDecoder(driver)
	if err != nil {
		return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: err}
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; a no-op on newer ones.
	if err := rlimit.RemoveMemlock(); err != nil {
		return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: fmt.Errorf("raise memlock rlimit: %w", err)}
	}
	spec, err := bpf.LoadExec()
	if err != nil {
		return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: err}
	}
	if b.opts.ForceInodeOffset {
		v, ok := spec.Variables[bpf.ExecVarForceInodeOffset]
		if !ok {
			return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: errors.New("object lacks force_inode_offset")}
		}
		if err := v.Set(uint8(1)); err != nil {
			return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: fmt.Errorf("set force_inode_offset: %w", err)}
		}
	}
	if rb := spec.Maps[bpf.ExecMapEventsRb]; rb != nil {
		rb.MaxEntries = uint32(b.opts.RingBufferBytes)
	}
	if v, ok := spec.Variables[bpf.ExecVarRingbufWakeupBytes]; !ok {
		return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: errors.New("object lacks ringbuf_wakeup_bytes")}
	} else if err := v.Set(uint64(b.opts.RingBufferBytes / 2)); err != nil {
		return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: fmt.Errorf("set ringbuf_wakeup_bytes: %w", err)}
	}
	// KernelTypes stays nil so CO-RE searches vmlinux and module BTF (overlay as a module).
	var closers []io.Closer
	cleanup := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i].Close()
		}
	}
	var (
		l                  link.Link
		rd                 recordReader
		settings, counters *ebpf.Map
	)
	switch driver {
	case v1alpha1.DriverModernEBPF:
		var objs modernObjects
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: fmt.Errorf("load tp_btf program: %w", err)}
		}
		closers = append(closers, objs.Prog, objs.Events, objs.Settings, objs.Counters)
		settings, counters = objs.Settings, objs.Counters
		if l, err = link.AttachTracing(link.TracingOptions{Program: objs.Prog}); err != nil {
			cleanup()
			return &Error{Reason: ReasonSensorAttachFailed, Driver: driver, Err: fmt.Errorf("attach tp_btf/sched_process_exec: %w", err)}
		}
		closers = append(closers, l)
		r, err := ringbuf.NewReader(objs.Events)
		if err != nil {
			cleanup()
			return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: fmt.Errorf("ring buffer reader: %w", err)}
		}
		rd = &ringbufReader{r: r, flush: b.opts.FlushInterval}
	case v1alpha1.DriverEBPF:
		var objs legacyObjects
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: fmt.Errorf("load raw_tp program: %w", err)}
		}
		closers = append(closers, objs.Prog, objs.Events, objs.Settings, objs.Counters)
		settings, counters = objs.Settings, objs.Counters
		if l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sched_process_exec", Program: objs.Prog}); err != nil {
			cleanup()
			return &Error{Reason: ReasonSensorAttachFailed, Driver: driver, Err: fmt.Errorf("attach raw_tp/sched_process_exec: %w", err)}
		}
		closers = append(closers, l)
		popts := perf.ReaderOptions{WakeupEvents: b.opts.PerfWakeupEvents}
		if popts.WakeupEvents <= 0 {
			popts.Watermark = max(1, b.opts.PerfBufferBytes/2)
		}
		r, err := perf.NewReaderWithOptions(objs.Events, b.opts.PerfBufferBytes, popts)
		if err != nil {
			cleanup()
			return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: fmt.Errorf("perf reader: %w", err)}
		}
		rd = &perfReader{r: r, flush: b.opts.FlushInterval}
	}
	// Detach first, then drain: the link closes before the reader and the maps.
	b.closers = append([]io.Closer{l}, closers[:len(closers)-1]...)
	b.driver = driver
	b.reader = rd
	b.settings, b.counters = settings, counters
	if b.lowerReq > 0 {
		if err := b.writeSettings(); err != nil {
			b.closeAll()
			return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: err}
		}
	}
	b.readDone = make(chan struct{})
	b.lastRead.Store(time.Now().UnixNano())
	go b.readLoop(rd, dec)
	return nil
}

// closeAll undoes a Start that failed after its objects were assigned; b.mu is held.
func (b *Builtin) closeAll() {
	b.reader.close()
	for _, c := range b.closers {
		c.Close()
	}
	b.closers, b.reader, b.settings, b.counters, b.driver = nil, nil, nil, nil, ""
}

// RequestLowerLayer makes the kernel program send lower-layer overlay execs too, until release is
// called (the self-test's lower-layer check needs them; otherwise the program drops them, since
// nearly every exec on a Kubernetes node is one). Requests nest; it works before Start too.
func (b *Builtin) RequestLowerLayer() (release func(), err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lowerReq++
	if err := b.writeSettings(); err != nil {
		b.lowerReq--
		return nil, err
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			b.lowerReq--
			_ = b.writeSettings() // best effort: the worst case is events nobody asked for
		})
	}, nil
}

// writeSettings stores the settings the requests call for; b.mu is held.
func (b *Builtin) writeSettings() error {
	if b.settings == nil {
		return nil
	}
	var v uint32
	if b.lowerReq > 0 {
		v |= uint32(bpf.ExecSettingFlagSETTING_SEND_LOWER)
	}
	if err := b.settings.Put(uint32(0), v); err != nil {
		return fmt.Errorf("write sensor settings: %w", err)
	}
	return nil
}

// Drops returns the events lost so far: in the kernel (no room in the ring or perf buffer), and
// in user space (a full subscriber channel, an undecodable record).
func (b *Builtin) Drops() Drops {
	b.mu.Lock()
	counters := b.counters
	b.mu.Unlock()
	d := Drops{Kernel: b.lost.Load(), User: b.dropped.Load()}
	if counters != nil {
		var perCPU []uint64
		if err := counters.Lookup(uint32(bpf.ExecCounterCOUNTER_DROPPED), &perCPU); err == nil {
			var n uint64
			for _, v := range perCPU {
				n += v
			}
			// A perf buffer's lost records count the same drops the program counted.
			d.Kernel = max(d.Kernel, n)
		}
	}
	return d
}

// Health reports whether the sensor still works: started, its reader alive and not stuck on one
// record for StallAfter. Errors are *HealthError.
func (b *Builtin) Health() error {
	b.mu.Lock()
	rd, done, readErr, closed := b.reader, b.readDone, b.readErr, b.closed
	b.mu.Unlock()
	if closed || rd == nil {
		return &HealthError{Reason: ReasonSensorStopped, Err: errors.New("the sensor is not running")}
	}
	select {
	case <-done:
		b.mu.Lock()
		readErr = b.readErr
		b.mu.Unlock()
		if readErr == nil {
			readErr = errors.New("no error")
		}
		return &HealthError{Reason: ReasonReaderStopped, Err: fmt.Errorf("the event reader stopped: %w", readErr)}
	default:
	}
	if since := time.Since(time.Unix(0, b.lastRead.Load())); since > b.opts.StallAfter {
		return &HealthError{Reason: ReasonReaderStalled,
			Err: fmt.Errorf("the event reader has not come back to the kernel buffer for %s (a blocked alert output?)", since.Round(time.Millisecond))}
	}
	return nil
}

// ReaderStats is what reading events has cost so far.
type ReaderStats struct {
	// CPU is the CPU time, user and system, of the reader's thread: waiting for the kernel
	// buffer, reading, decoding and handing each event to the subscribers (and writing its alert,
	// where alerts are on). What subscribers then do with an event is theirs.
	CPU time.Duration
}

// ReaderStats reports the reader's cost so far, from the kernel's account of its thread
// (/proc/self/task/<tid>/schedstat). It fails before Start and once the reader has stopped.
func (b *Builtin) ReaderStats() (ReaderStats, error) {
	tid := b.readerTID.Load()
	if tid == 0 {
		return ReaderStats{}, errors.New("the event reader is not running")
	}
	data, err := os.ReadFile(filepath.Join("/proc/self/task", strconv.FormatInt(tid, 10), "schedstat"))
	if err != nil {
		return ReaderStats{}, fmt.Errorf("reader thread CPU time: %w", err)
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return ReaderStats{}, errors.New("reader thread CPU time: empty schedstat")
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return ReaderStats{}, fmt.Errorf("reader thread CPU time: %w", err)
	}
	return ReaderStats{CPU: time.Duration(ns)}, nil
}

// readLoop decodes records until the reader is closed. A panic (in an alert writer, say) stops it
// with an error instead of the agent: Health reports it.
//
// It keeps its thread to itself (the thread mostly sleeps in epoll_wait, where Go would park an
// OS thread for it anyway), so that thread's CPU time is the reader's cost (ReaderStats); the
// thread ends with the loop.
func (b *Builtin) readLoop(rd recordReader, dec *Decoder) {
	runtime.LockOSThread()
	b.readerTID.Store(int64(unix.Gettid()))
	defer b.readerTID.Store(0)
	defer close(b.readDone)
	defer func() {
		if p := recover(); p != nil {
			b.mu.Lock()
			b.readErr = fmt.Errorf("event reader panicked: %v", p)
			b.mu.Unlock()
		}
	}()
	// Records come in batches (the kernel wakes the reader once per many events, or the flush
	// interval does): the reader decodes every pending record, then hands the batch on, so a
	// subscriber is woken about once per batch rather than once per event.
	batch := make([]Event, 0, readBatch)
	for {
		raw, lost, err := rd.read(false)
		// The batch's records were in the kernel buffer when the reader came back: one clock
		// read stamps them all (Event.Received).
		now := time.Now()
		b.lastRead.Store(now.UnixNano())
		for {
			if err != nil {
				break
			}
			if lost > 0 {
				b.lost.Add(lost)
			} else if ev, err := dec.decodeAt(raw, now); err != nil {
				b.dropped.Add(1)
			} else {
				batch = append(batch, ev)
			}
			if len(batch) == cap(batch) {
				break
			}
			raw, lost, err = rd.read(true)
		}
		b.deliver(batch)
		clear(batch) // no strings kept alive until the next batch
		batch = batch[:0]
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// os.ErrDeadlineExceeded: every pending record was read. Anything else ends the reader.
			if !errors.Is(err, os.ErrClosed) {
				b.mu.Lock()
				b.readErr = fmt.Errorf("read events: %w", err)
				b.mu.Unlock()
			}
			return
		}
	}
}

// readBatch is the most records the reader decodes before it hands them on.
const readBatch = 1024

// deliver hands the events to every subscriber, then writes their alerts. Alerts are written
// without b.mu: a blocked output (a full stdout pipe) must not block Subscribe, Close or Health,
// which need it. It still holds up this reader, which Health then reports as stalled, and the
// kernel counts what it cannot buffer meanwhile as drops.
func (b *Builtin) deliver(events []Event) {
	if len(events) == 0 {
		return
	}
	b.mu.Lock()
	for _, ch := range b.subs {
		for i := range events {
			select {
			case ch <- events[i]:
			default:
				b.dropped.Add(1)
			}
		}
	}
	writeAlert := b.opts.Alerts != nil && b.alertErr == nil
	b.mu.Unlock()
	if !writeAlert {
		return
	}
	for _, ev := range events {
		if !ev.UpperLayer() {
			continue
		}
		ev.Container = ContainerOfEvent(b.opts.ProcRoot, ev)
		if err := WriteAlert(b.opts.Alerts, ev, b.opts.Hostname); err != nil {
			b.mu.Lock()
			b.alertErr = err
			b.mu.Unlock()
			return
		}
	}
}

// Subscribe implements Sensor.
func (b *Builtin) Subscribe() (<-chan Event, func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := make(chan Event, b.opts.SubscriberBuffer)
	if b.closed {
		close(ch)
		return ch, func() {}
	}
	id := b.nextSub
	b.nextSub++
	b.subs[id] = ch
	return ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if c, ok := b.subs[id]; ok {
			delete(b.subs, id)
			close(c)
		}
	}
}

// Driver returns the driver the sensor runs with, or "" before Start.
func (b *Builtin) Driver() v1alpha1.Driver {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.driver
}

// Close detaches the program, stops reading, frees the maps and ends every subscription.
// It reports a failed alert write or event read, if any.
func (b *Builtin) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	rd, done, closers := b.reader, b.readDone, b.closers
	b.mu.Unlock()

	var errs []error
	if rd != nil {
		// Detach before the reader goes so no exec is half-delivered into a closing buffer.
		if len(closers) > 0 {
			errs = append(errs, closers[0].Close())
			closers = closers[1:]
		}
		errs = append(errs, rd.close())
		select {
		case <-done:
		case <-time.After(closeWait):
			// A reader stuck in an alert write cannot be interrupted; leave it rather than hang.
			errs = append(errs, fmt.Errorf("event reader did not stop within %s (blocked writing an alert?)", closeWait))
		}
	}
	for _, c := range closers {
		errs = append(errs, c.Close())
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	for id, ch := range b.subs {
		delete(b.subs, id)
		close(ch)
	}
	errs = append(errs, b.readErr, b.alertErr)
	return errors.Join(errs...)
}

// closeWait bounds how long Close waits for the reader goroutine.
const closeWait = 5 * time.Second

// recordReader hides the difference between the ring buffer and the perf event array.
type recordReader interface {
	// read returns the next record, waiting up to a flush interval for it, or with drain not at
	// all; os.ErrDeadlineExceeded says there was none. lost > 0 reports samples the kernel
	// dropped instead. raw is valid until the next read.
	read(drain bool) (raw []byte, lost uint64, err error)
	close() error
}

// ringbufReader reads with a deadline of one flush interval: the program writes without waking
// the reader, so after the deadline it takes whatever is pending, then returns
// os.ErrDeadlineExceeded. Its record is reused: a record's bytes are valid until the next read.
type ringbufReader struct {
	r     *ringbuf.Reader
	flush time.Duration
	rec   ringbuf.Record
	dl    deadline
}

func (r *ringbufReader) read(drain bool) ([]byte, uint64, error) {
	r.dl.set(r.r.SetDeadline, drain, r.flush)
	err := r.r.ReadInto(&r.rec)
	return r.rec.RawSample, 0, err
}

func (r *ringbufReader) close() error { return r.r.Close() }

// perfReader reads like ringbufReader: the perf buffers wake it every PerfWakeupEvents events,
// the deadline takes the rest.
type perfReader struct {
	r     *perf.Reader
	flush time.Duration
	rec   perf.Record
	dl    deadline
}

func (r *perfReader) read(drain bool) ([]byte, uint64, error) {
	r.dl.set(r.r.SetDeadline, drain, r.flush)
	err := r.r.ReadInto(&r.rec)
	return r.rec.RawSample, r.rec.LostSamples, err
}

func (r *perfReader) close() error { return r.r.Close() }

// deadline sets a reader's deadline: a flush interval from now to wait for records, or one
// already past to take what is pending without waiting (draining). A drain sets it once for all
// the records it takes.
type deadline struct{ draining bool }

// drained is a deadline already past.
var drained = time.Unix(1, 0)

func (d *deadline) set(setDeadline func(time.Time), drain bool, flush time.Duration) {
	switch {
	case !drain:
		setDeadline(time.Now().Add(flush))
	case !d.draining:
		setDeadline(drained)
	}
	d.draining = drain
}
