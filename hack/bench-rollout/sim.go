package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/version"
)

// sim plays N node agents with one shared informer and a small pool of writers, writing what
// the real agent writes (agent/agent.go report): the probe with a heartbeat first, then a
// self-test verdict for each new spec.attempt after selfTestDelay, and a heartbeat every period.
type sim struct {
	o      options
	c      client.Client
	cache  cache.Cache
	q      workqueue.TypedDelayingInterface[string]
	agents map[string]*agent
	obs    *observer
	wg     sync.WaitGroup

	writes, writeErrors, verdicts, probes, beats atomic.Int64
}

type agent struct {
	mu        sync.Mutex
	name      string
	bootID    string
	probed    bool
	testing   int32 // attempt under test
	testStart time.Time
	reported  int32 // attempt whose verdict was written
	lastBeat  time.Time
}

type simStats struct{ writes, writeErrors, verdicts, probes, beats int64 }

func (s *sim) stats() simStats {
	return simStats{s.writes.Load(), s.writeErrors.Load(), s.verdicts.Load(), s.probes.Load(), s.beats.Load()}
}

func startSim(ctx context.Context, cfg *rest.Config, sch *runtime.Scheme, names []string, o options) (*sim, error) {
	c, err := client.New(cfg, client.Options{Scheme: sch})
	if err != nil {
		return nil, err
	}
	ca, err := cache.New(cfg, cache.Options{Scheme: sch})
	if err != nil {
		return nil, err
	}
	s := &sim{o: o, c: c, cache: ca, q: workqueue.NewTypedDelayingQueue[string](), agents: map[string]*agent{}, obs: newObserver(len(names))}
	for _, n := range names {
		s.agents[n] = &agent{name: n, bootID: "boot-" + n}
	}
	nsInf, err := ca.GetInformer(ctx, &v1alpha1.NodeSensor{})
	if err != nil {
		return nil, err
	}
	enqueue := func(obj any) {
		if ns, ok := obj.(*v1alpha1.NodeSensor); ok {
			s.obs.sensor(ns)
			if _, mine := s.agents[ns.Name]; mine {
				s.q.Add(ns.Name)
			}
		}
	}
	if _, err := nsInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, n any) { enqueue(n) },
	}); err != nil {
		return nil, err
	}
	nodeInf, err := ca.GetInformer(ctx, &corev1.Node{})
	if err != nil {
		return nil, err
	}
	if _, err := nodeInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.obs.node(o) },
		UpdateFunc: func(_, n any) { s.obs.node(n) },
	}); err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); _ = ca.Start(ctx) }()
	if !ca.WaitForCacheSync(ctx) {
		return nil, fmt.Errorf("simulated agents: cache did not sync")
	}
	for w := 0; w < o.agentWorkers; w++ {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.worker(ctx) }()
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.heartbeats(ctx) }()
	go func() { <-ctx.Done(); s.q.ShutDown() }()
	return s, nil
}

func (s *sim) wait() { s.wg.Wait() }

func (s *sim) worker(ctx context.Context) {
	for {
		name, shutdown := s.q.Get()
		if shutdown {
			return
		}
		if again := s.step(ctx, name); again > 0 && ctx.Err() == nil {
			s.q.AddAfter(name, again)
		}
		s.q.Done(name)
	}
}

// step does what the agent of one node does on seeing its NodeSensor; it returns when to
// look again (0: on the next change).
func (s *sim) step(ctx context.Context, name string) time.Duration {
	a := s.agents[name]
	ns := &v1alpha1.NodeSensor{}
	if err := s.cache.Get(ctx, client.ObjectKey{Name: name}, ns); err != nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.probed {
		if err := s.report(ctx, ns, func(st *v1alpha1.NodeSensorStatus) { st.Probe = typicalFacts(a.bootID) }); err != nil {
			return 200 * time.Millisecond
		}
		a.probed, a.lastBeat = true, time.Now()
		s.probes.Add(1)
		return 0
	}
	spec := ns.Spec
	if spec.Driver == "" || spec.Attempt == a.reported {
		return 0
	}
	if a.testing != spec.Attempt {
		a.testing, a.testStart = spec.Attempt, time.Now()
	}
	if left := s.o.selfTestDelay - time.Since(a.testStart); left > 0 {
		return left
	}
	start, finish := metav1.NewTime(a.testStart), metav1.Now()
	checks := make([]v1alpha1.CheckResult, 0, len(v1alpha1.AllChecks))
	for _, c := range v1alpha1.AllChecks {
		checks = append(checks, v1alpha1.CheckResult{Name: c, Result: v1alpha1.SelfTestPassed, Expected: "expected", Observed: "expected", Method: "CORE"})
	}
	verdict := &v1alpha1.SelfTestStatus{
		Driver: spec.Driver, Attempt: spec.Attempt, Result: v1alpha1.SelfTestPassed, BootID: a.bootID,
		StartTime: &start, FinishTime: &finish, Checks: checks, AgentVersion: version.Version,
	}
	if err := s.report(ctx, ns, func(st *v1alpha1.NodeSensorStatus) { st.SelfTest = verdict }); err != nil {
		return 200 * time.Millisecond
	}
	a.reported, a.lastBeat = spec.Attempt, time.Now()
	s.verdicts.Add(1)
	return 0
}

// report patches the status with a change and a fresh heartbeat, as agent.report does.
func (s *sim) report(ctx context.Context, ns *v1alpha1.NodeSensor, change func(*v1alpha1.NodeSensorStatus)) error {
	base := ns.DeepCopy()
	change(&ns.Status)
	now := metav1.Now()
	ns.Status.HeartbeatTime = &now
	ns.Status.AgentVersion = version.Version
	s.writes.Add(1)
	if err := s.c.Status().Patch(ctx, ns, client.MergeFrom(base)); err != nil {
		s.writeErrors.Add(1)
		return err
	}
	return nil
}

// heartbeats renews each probed agent's heartbeat every period, spread over time.
func (s *sim) heartbeats(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, a := range s.agents {
			a.mu.Lock()
			due := a.probed && time.Since(a.lastBeat) >= s.o.heartbeat
			a.mu.Unlock()
			if !due {
				continue
			}
			ns := &v1alpha1.NodeSensor{}
			if err := s.cache.Get(ctx, client.ObjectKey{Name: a.name}, ns); err != nil {
				continue
			}
			a.mu.Lock()
			if err := s.report(ctx, ns, func(*v1alpha1.NodeSensorStatus) {}); err == nil {
				a.lastBeat = time.Now()
				s.beats.Add(1)
			}
			a.mu.Unlock()
		}
	}
}

// typicalFacts are those of a node where every driver can work (as in controllers/suite_test.go).
func typicalFacts(bootID string) *v1alpha1.ProbeFacts {
	yes := v1alpha1.BoolFact{Answer: v1alpha1.AnswerYes, Source: "bench"}
	no := v1alpha1.BoolFact{Answer: v1alpha1.AnswerNo, Source: "bench"}
	str := func(v string) v1alpha1.StringFact { return v1alpha1.StringFact{Value: v, Source: "bench"} }
	now := metav1.Now()
	return &v1alpha1.ProbeFacts{
		Kernel:     v1alpha1.KernelFacts{Release: str("6.1.0-28-cloud-amd64"), Version: str("6.1.119"), Architecture: str("amd64"), BootID: str(bootID)},
		BTF:        v1alpha1.BTFFacts{Vmlinux: yes, OverlayTypes: str(v1alpha1.OverlayTypesModule)},
		EBPF:       v1alpha1.EBPFFacts{TPBTF: yes, RawTracepoint: yes, RingBuffer: yes},
		Lockdown:   str("none"),
		Modules:    v1alpha1.ModuleFacts{Supported: yes, Disabled: no},
		SecureBoot: no,
		Overlayfs:  yes,
		Distro:     v1alpha1.DistroFacts{ID: "debian", VersionID: "12", Source: "bench"},
		Cloud:      str("aws"),
		ProbeTime:  &now,
	}
}

// observer follows the NodeSensors and the nodes' conditions from the same informers.
type observer struct {
	n        int
	mu       sync.Mutex
	t0       time.Time
	started  bool
	ready    map[string]bool
	inFlight map[string]bool
	assigned map[string]bool
	sensors  map[string]bool
	maxIn    int
	maxAtt   int32
	first    struct{ sensor, assign, ready time.Time }
	allAt    time.Time
	allReady chan struct{}
}

type progressSnap struct {
	sensors, assigned, ready, maxInFlight int
	maxAttempt                            int32
	firstSensor, firstAssign, firstReady  time.Duration
}

func newObserver(n int) *observer {
	return &observer{n: n, ready: map[string]bool{}, inFlight: map[string]bool{}, assigned: map[string]bool{}, sensors: map[string]bool{}, allReady: make(chan struct{})}
}

func (o *observer) start(t0 time.Time) { o.mu.Lock(); o.t0, o.started = t0, true; o.mu.Unlock() }

func (o *observer) sensor(ns *v1alpha1.NodeSensor) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	if !o.sensors[ns.Name] {
		o.sensors[ns.Name] = true
		if o.first.sensor.IsZero() {
			o.first.sensor = now
		}
	}
	if ns.Spec.Driver != "" && !o.assigned[ns.Name] {
		o.assigned[ns.Name] = true
		if o.first.assign.IsZero() {
			o.first.assign = now
		}
	}
	if ns.Spec.Attempt > o.maxAtt {
		o.maxAtt = ns.Spec.Attempt
	}
	st := ns.Status.SelfTest
	if ns.Spec.Driver != "" && (st == nil || st.Attempt != ns.Spec.Attempt) {
		o.inFlight[ns.Name] = true
	} else {
		delete(o.inFlight, ns.Name)
	}
	if len(o.inFlight) > o.maxIn {
		o.maxIn = len(o.inFlight)
	}
}

func (o *observer) node(obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	verified := false
	for _, c := range n.Status.Conditions {
		if c.Type == v1alpha1.NodeConditionRuntimeSecurityReady && c.Status == corev1.ConditionTrue && c.Reason == "Verified" {
			verified = true
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.started {
		return
	}
	if verified && !o.ready[n.Name] {
		o.ready[n.Name] = true
		if o.first.ready.IsZero() {
			o.first.ready = time.Now()
		}
		if len(o.ready) == o.n && o.allAt.IsZero() {
			o.allAt = time.Now()
			close(o.allReady)
		}
	} else if !verified && o.ready[n.Name] {
		delete(o.ready, n.Name) // a node left Verified: it must come back
	}
}

func (o *observer) readyAt() time.Time { o.mu.Lock(); defer o.mu.Unlock(); return o.allAt }

func (o *observer) snapshot() progressSnap {
	o.mu.Lock()
	defer o.mu.Unlock()
	since := func(t time.Time) time.Duration {
		if t.IsZero() {
			return -1
		}
		return t.Sub(o.t0)
	}
	return progressSnap{
		sensors: len(o.sensors), assigned: len(o.assigned), ready: len(o.ready), maxInFlight: o.maxIn, maxAttempt: o.maxAtt,
		firstSensor: since(o.first.sensor), firstAssign: since(o.first.assign), firstReady: since(o.first.ready),
	}
}
