package falco

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// ReasonFalcoRestarting is the reason Start fails with while Falco restarts with another driver.
const ReasonFalcoRestarting = "FalcoRestarting"

// Options configure a Falco sensor.
type Options struct {
	// Listen is the receiver's address (default DefaultListen); ":0" picks a port (see Addr).
	Listen string
	// ConfigDir is the tree the init step wrote (WriteConfig); Start checks that Falco was
	// configured with the driver it is asked for. Empty: not checked.
	ConfigDir string
	// HealthURL is Falco's health endpoint (webserver /healthz); Start waits until it answers
	// 200, so a Falco that is still loading its driver is not taken for a blind one. Empty: not
	// checked.
	HealthURL string
	// StartTimeout bounds the wait for Falco's health and for a restart (default 3 minutes).
	StartTimeout time.Duration
	// Restart restarts Falco so it reads the configuration for wanted (the pod's init step writes
	// it). Start calls it when Falco runs with another driver, then waits for Context to end: a
	// restart that works replaces the agent too. Nil: Start fails instead.
	Restart func(ctx context.Context, configured, wanted v1alpha1.Driver) error
	// Context ends the waits of Start (the agent's context).
	Context context.Context
	// Log receives bad alerts and restarts.
	Log logr.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Stats count what the receiver got.
type Stats struct {
	// Requests is the number of POSTs received.
	Requests uint64
	// Events is the number of alerts turned into events.
	Events uint64
	// OtherRules is the number of alerts of rules the self-test does not read.
	OtherRules uint64
	// Invalid is the number of documents that were not JSON alerts, or partial ones.
	Invalid uint64
	// Dropped is the number of events a slow subscriber did not take.
	Dropped uint64
	// FalcoDrops is the number of syscall events Falco reported dropped (DropRule alerts).
	FalcoDrops uint64
}

// Sensor is the agent's end of a Falco sensor: an HTTP receiver for Falco's alerts. It
// implements sensor.Sensor.
type Sensor struct {
	opts Options

	mu      sync.Mutex
	driver  v1alpha1.Driver
	server  *http.Server
	ln      net.Listener
	served  chan struct{}
	subs    map[int]chan sensor.Event
	nextSub int
	closed  bool

	requests, events, other, invalid, dropped, falcoDrops atomic.Uint64
	// healthFailures counts health endpoint failures in a row.
	healthFailures atomic.Int32
}

var _ sensor.Sensor = (*Sensor)(nil)

// New returns a stopped Falco sensor.
func New(o Options) *Sensor {
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 3 * time.Minute
	}
	if o.Context == nil {
		o.Context = context.Background()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Sensor{opts: o, subs: map[int]chan sensor.Event{}}
}

// Start checks that Falco is configured for driver (restarting it when it is not), starts the
// receiver and waits until Falco is healthy.
func (s *Sensor) Start(driver v1alpha1.Driver) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return &sensor.Error{Reason: sensor.ReasonSensorLoadFailed, Driver: driver, Err: errors.New("sensor closed")}
	}
	if s.server != nil {
		if driver == s.driver {
			return nil
		}
		return &sensor.Error{Reason: sensor.ReasonDriverNotSupported, Driver: driver,
			Err: fmt.Errorf("%w: Falco receiver already started with %s", sensor.ErrDriverNotSupported, s.driver)}
	}
	if s.opts.ConfigDir != "" {
		configured, err := ConfiguredDriver(s.opts.ConfigDir)
		if err != nil {
			return &sensor.Error{Reason: sensor.ReasonSensorLoadFailed, Driver: driver, Err: err}
		}
		if configured != driver {
			return s.restart(configured, driver)
		}
	}
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return &sensor.Error{Reason: sensor.ReasonSensorLoadFailed, Driver: driver, Err: fmt.Errorf("listen for Falco alerts: %w", err)}
	}
	mux := http.NewServeMux()
	mux.Handle(AlertsPath, s.Handler())
	s.server = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.ln, s.driver, s.served = ln, driver, make(chan struct{})
	go func(srv *http.Server, done chan struct{}) {
		defer close(done)
		_ = srv.Serve(ln) // returns http.ErrServerClosed on Close
	}(s.server, s.served)
	if err := s.waitHealthy(); err != nil {
		s.stopServer()
		return &sensor.Error{Reason: sensor.ReasonSensorLoadFailed, Driver: driver, Err: err}
	}
	return nil
}

// restart asks for a Falco restart with wanted and waits for the agent to be stopped with it.
func (s *Sensor) restart(configured, wanted v1alpha1.Driver) error {
	if s.opts.Restart == nil {
		return &sensor.Error{Reason: ReasonFalcoRestarting, Driver: wanted,
			Err: fmt.Errorf("Falco is configured with %s and this agent cannot restart it", configured)}
	}
	s.opts.Log.Info("Restarting Falco for the new driver", "configured", configured, "driver", wanted)
	ctx, cancel := context.WithTimeout(s.opts.Context, s.opts.StartTimeout)
	defer cancel()
	if err := s.opts.Restart(ctx, configured, wanted); err != nil {
		return &sensor.Error{Reason: ReasonFalcoRestarting, Driver: wanted, Err: fmt.Errorf("restart Falco: %w", err)}
	}
	<-ctx.Done()
	return &sensor.Error{Reason: ReasonFalcoRestarting, Driver: wanted,
		Err: fmt.Errorf("Falco restart for %s (was %s) requested; still running: %w", wanted, configured, ctx.Err())}
}

func (s *Sensor) waitHealthy() error {
	if s.opts.HealthURL == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.opts.Context, s.opts.StartTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.opts.HealthURL, nil)
		if err != nil {
			return fmt.Errorf("Falco health URL: %w", err)
		}
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("Falco not healthy at %s within %s: %w", s.opts.HealthURL, s.opts.StartTimeout, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Addr is the receiver's address while it runs, "" otherwise.
func (s *Sensor) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Stats returns the counters.
func (s *Sensor) Stats() Stats {
	return Stats{Requests: s.requests.Load(), Events: s.events.Load(), OtherRules: s.other.Load(),
		Invalid: s.invalid.Load(), Dropped: s.dropped.Load(), FalcoDrops: s.falcoDrops.Load()}
}

// Drops implements sensor.DropCounter: Falco's own drop reports and events a slow subscriber
// did not take.
func (s *Sensor) Drops() sensor.Drops {
	return sensor.Drops{User: s.dropped.Load(), Sensor: s.falcoDrops.Load()}
}

// ReportsAllExecs implements sensor.AllExecsReporter: DriverPilot's rule makes Falco alert on
// every dp-* exec, so the agent can prove the alert flow between self-tests.
func (s *Sensor) ReportsAllExecs() bool { return true }

// Reasons of the *sensor.HealthError values Health returns.
const (
	// ReasonReceiverStopped: the agent's alert receiver stopped serving.
	ReasonReceiverStopped = "ReceiverStopped"
	// ReasonFalcoUnhealthy: Falco's health endpoint failed twice in a row.
	ReasonFalcoUnhealthy = "FalcoUnhealthy"
)

// Health implements sensor.HealthChecker: the receiver serves, and Falco's health endpoint
// (webserver /healthz) answers 200; two failures in a row make Falco unhealthy, so one slow
// answer does not take a node out of service.
func (s *Sensor) Health() error {
	s.mu.Lock()
	srv, served := s.server, s.served
	s.mu.Unlock()
	if srv == nil {
		return &sensor.HealthError{Reason: sensor.ReasonSensorStopped, Err: errors.New("the Falco alert receiver is not running")}
	}
	select {
	case <-served:
		return &sensor.HealthError{Reason: ReasonReceiverStopped, Err: errors.New("the Falco alert receiver stopped serving")}
	default:
	}
	if s.opts.HealthURL == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.opts.Context, 2*time.Second)
	defer cancel()
	if err := s.checkHealth(ctx); err != nil {
		if n := s.healthFailures.Add(1); n >= 2 {
			return &sensor.HealthError{Reason: ReasonFalcoUnhealthy, Err: fmt.Errorf("Falco health endpoint %s, %d failures in a row: %w", s.opts.HealthURL, n, err)}
		}
		return nil
	}
	s.healthFailures.Store(0)
	return nil
}

// checkHealth asks Falco's health endpoint once.
func (s *Sensor) checkHealth(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.opts.HealthURL, nil)
	if err != nil {
		return fmt.Errorf("Falco health URL: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// maxBody bounds one POST; a Falco alert is a few kilobytes.
const maxBody = 1 << 20

// Handler receives Falco's http_output POSTs: one JSON alert per request (several
// concatenated documents are accepted too). It answers 400 when a document is not an alert, so
// Falco logs the failure; it never stops the receiver.
func (s *Sensor) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST Falco alerts here", http.StatusMethodNotAllowed)
			return
		}
		s.requests.Add(1)
		received := s.opts.Now()
		s.mu.Lock()
		driver := s.driver
		s.mu.Unlock()
		dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
		dec.UseNumber()
		bad := 0
		for {
			var a Alert
			err := dec.Decode(&a)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				s.invalid.Add(1)
				bad++
				s.opts.Log.Info("Bad Falco alert", "error", err.Error())
				break // the stream cannot be resynchronised after a syntax error
			}
			if a.Rule == DropRule {
				s.falcoDrops.Add(a.drops())
				continue
			}
			ev, err := a.Event(received, driver)
			switch {
			case errors.Is(err, ErrOtherRule):
				s.other.Add(1)
			case err != nil:
				s.invalid.Add(1)
				bad++
				s.opts.Log.Info("Partial Falco alert", "rule", a.Rule, "error", err.Error())
			default:
				s.events.Add(1)
				s.publish(ev)
			}
		}
		if bad > 0 {
			http.Error(w, "not a Falco alert with the fields DriverPilot reads", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
}

func (s *Sensor) publish(ev sensor.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.subs {
		select {
		case ch <- ev:
		default:
			s.dropped.Add(1)
		}
	}
}

// Subscribe returns the events received from now on.
func (s *Sensor) Subscribe() (<-chan sensor.Event, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan sensor.Event, 256)
	if s.closed {
		close(ch)
		return ch, func() {}
	}
	id := s.nextSub
	s.nextSub++
	s.subs[id] = ch
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if c, ok := s.subs[id]; ok {
				delete(s.subs, id)
				close(c)
			}
		})
	}
}

// Close stops the receiver and ends every subscription.
func (s *Sensor) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.stopServer()
	for id, ch := range s.subs {
		delete(s.subs, id)
		close(ch)
	}
	return nil
}

// stopServer stops the receiver; s.mu is held.
func (s *Sensor) stopServer() {
	if s.server == nil {
		return
	}
	_ = s.server.Close()
	<-s.served
	s.server, s.ln, s.driver = nil, nil, ""
}
