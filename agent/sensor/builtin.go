package sensor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/perf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"

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
	subs     map[int]chan Event
	nextSub  int
	closed   bool
	readDone chan struct{}
	readErr  error
	alertErr error

	lost    atomic.Uint64 // samples the kernel could not deliver
	dropped atomic.Uint64 // events a slow subscriber did not take, or that did not decode
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
	return &Builtin{opts: opts, subs: map[int]chan Event{}}
}

// modernObjects and legacyObjects select the one program and map each driver loads; the other
// pair in the object is never created (a kernel without ring buffers can still run ebpf).
type modernObjects struct {
	Prog   *ebpf.Program `ebpf:"dp_exec_tp_btf"`
	Events *ebpf.Map     `ebpf:"events_rb"`
}

type legacyObjects struct {
	Prog   *ebpf.Program `ebpf:"dp_exec_raw_tp"`
	Events *ebpf.Map     `ebpf:"events_perf"`
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
	// KernelTypes stays nil so CO-RE searches vmlinux and module BTF (overlay as a module).
	var closers []io.Closer
	cleanup := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i].Close()
		}
	}
	var (
		l  link.Link
		rd recordReader
	)
	switch driver {
	case v1alpha1.DriverModernEBPF:
		var objs modernObjects
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: fmt.Errorf("load tp_btf program: %w", err)}
		}
		closers = append(closers, objs.Prog, objs.Events)
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
		rd = ringbufReader{r}
	case v1alpha1.DriverEBPF:
		var objs legacyObjects
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: fmt.Errorf("load raw_tp program: %w", err)}
		}
		closers = append(closers, objs.Prog, objs.Events)
		if l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sched_process_exec", Program: objs.Prog}); err != nil {
			cleanup()
			return &Error{Reason: ReasonSensorAttachFailed, Driver: driver, Err: fmt.Errorf("attach raw_tp/sched_process_exec: %w", err)}
		}
		closers = append(closers, l)
		r, err := perf.NewReader(objs.Events, b.opts.PerfBufferBytes)
		if err != nil {
			cleanup()
			return &Error{Reason: ReasonSensorLoadFailed, Driver: driver, Err: fmt.Errorf("perf reader: %w", err)}
		}
		rd = perfReader{r}
	}
	// Detach first, then drain: the link closes before the reader and the maps.
	b.closers = append([]io.Closer{l}, closers[:len(closers)-1]...)
	b.driver = driver
	b.reader = rd
	b.readDone = make(chan struct{})
	go b.readLoop(rd, dec)
	return nil
}

// readLoop decodes records until the reader is closed.
func (b *Builtin) readLoop(rd recordReader, dec *Decoder) {
	defer close(b.readDone)
	for {
		raw, lost, err := rd.read()
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				b.mu.Lock()
				b.readErr = fmt.Errorf("read events: %w", err)
				b.mu.Unlock()
			}
			return
		}
		if lost > 0 {
			b.lost.Add(lost)
			continue
		}
		ev, err := dec.Decode(raw)
		if err != nil {
			b.dropped.Add(1)
			continue
		}
		b.deliver(ev)
	}
}

func (b *Builtin) deliver(ev Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.opts.Alerts != nil && b.alertErr == nil {
		if ev.UpperLayer() {
			ev.Container = ContainerOf(b.opts.ProcRoot, ev.TGID)
		}
		b.alertErr = WriteAlert(b.opts.Alerts, ev, b.opts.Hostname)
	}
	for _, ch := range b.subs {
		select {
		case ch <- ev:
		default:
			b.dropped.Add(1)
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

// Lost returns how many events the kernel could not deliver (perf) and how many were dropped in
// user space (a slow subscriber, an undecodable record).
func (b *Builtin) Lost() (kernel, userspace uint64) {
	return b.lost.Load(), b.dropped.Load()
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
		<-done
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

// recordReader hides the difference between the ring buffer and the perf event array.
type recordReader interface {
	// read blocks for the next record; lost > 0 reports samples the kernel dropped instead.
	read() (raw []byte, lost uint64, err error)
	close() error
}

type ringbufReader struct{ r *ringbuf.Reader }

func (r ringbufReader) read() ([]byte, uint64, error) {
	rec, err := r.r.Read()
	return rec.RawSample, 0, err
}

func (r ringbufReader) close() error { return r.r.Close() }

type perfReader struct{ r *perf.Reader }

func (r perfReader) read() ([]byte, uint64, error) {
	rec, err := r.r.Read()
	return rec.RawSample, rec.LostSamples, err
}

func (r perfReader) close() error { return r.r.Close() }
