// Package simagent plays the node agents of many simulated nodes at the API: what the real agent
// (agent/agent.go report) writes to its NodeSensor's status, without a kernel. The probe goes
// first with a heartbeat, then a self-test verdict for each new spec.attempt after a delay, and
// a heartbeat every period. One shared informer and a small pool of writers serve every node, so
// hundreds of agents cost little.
//
// Like the real agent, a simulated agent reports its facts again to a NodeSensor that was
// deleted and created anew, and tests again after a restart. Faults are injected from outside:
// Silence stops every agent (a brownout), Restart makes one agent start over, and a Verdict hook
// decides a node's self-test results; SilenceNode stops one agent. SetAgentVersion plays an
// upgrade of every agent: like the real agent, a new agent keeps an older agent's proof of the
// current attempt and tests again only when the manager asks for a new attempt. The rollout
// benchmark (hack/bench-rollout) and the fault suite (test/fault) use it.
package simagent

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/heartbeat"
)

// Options configure a fleet of simulated agents.
type Options struct {
	// SelfTestDelay is how long a self-test takes.
	SelfTestDelay time.Duration
	// Heartbeat is how often an idle agent renews its heartbeat.
	Heartbeat time.Duration
	// LeaseNamespace is where the agents renew their heartbeat Leases, as the real agent does;
	// empty writes heartbeats into the NodeSensor status, as agents before the Lease did.
	LeaseNamespace string
	// Workers is the number of concurrent writers (default 8).
	Workers int
	// AgentVersion is the version the agents report.
	AgentVersion string
	// Verdict decides a self-test's result; nil passes every check. It gets the node and the spec
	// under test, and returns the status to report: nil for the honest Passed verdict of Honest.
	Verdict func(node string, spec v1alpha1.NodeSensorSpec, honest *v1alpha1.SelfTestStatus) *v1alpha1.SelfTestStatus
	// OnSensor, when set, sees every NodeSensor the informer delivers (for observers).
	OnSensor func(*v1alpha1.NodeSensor)
	// OnWrite, when set, sees every NodeSensor as an agent's write left it (with its new
	// resourceVersion): an observer whose watch re-lists misses versions, the writer never does.
	OnWrite func(*v1alpha1.NodeSensor)
	// NoHeartbeat makes the agents write no heartbeat at all (the manager then never expires
	// them): for tests of the rollout's decisions on a machine too busy for hundreds of agents
	// to beat within a short heartbeat timeout.
	NoHeartbeat bool
	// Facts, when set, gives each node its own facts (a fleet of several kernels); nil gives
	// every node TypicalFacts.
	Facts func(node, bootID string) *v1alpha1.ProbeFacts
}

// Fleet is a running set of simulated agents.
type Fleet struct {
	o      Options
	c      client.Client
	cache  cache.Cache
	q      workqueue.TypedDelayingInterface[string]
	wg     sync.WaitGroup
	silent atomic.Bool

	mu     sync.Mutex
	agents map[string]*agent

	writes, writeErrors, verdicts, probes, beats atomic.Int64

	// version is what the agents report: Options.AgentVersion, then SetAgentVersion's.
	version atomic.Pointer[string]
}

type agent struct {
	mu        sync.Mutex
	lease     *heartbeat.Renewer // its heartbeat Lease, as the real agent keeps it
	name      string
	bootID    string
	facts     func(bootID string) *v1alpha1.ProbeFacts
	uid       types.UID // the NodeSensor the facts went to
	probed    bool
	testing   int32 // attempt under test
	testStart time.Time
	reported  int32 // attempt whose verdict was written
	lastBeat  time.Time
	silent    bool // this agent alone stopped (its pod hangs)
}

// Stats count what the agents did.
type Stats struct{ Writes, WriteErrors, Verdicts, Probes, Beats int64 }

// Stats returns the counts so far.
func (f *Fleet) Stats() Stats {
	return Stats{f.writes.Load(), f.writeErrors.Load(), f.verdicts.Load(), f.probes.Load(), f.beats.Load()}
}

// Start starts agents for the named nodes (each with boot ID "boot-<name>"); they stop with ctx.
func Start(ctx context.Context, cfg *rest.Config, sch *runtime.Scheme, names []string, o Options) (*Fleet, error) {
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 40 * time.Second // the real agent's default
	}
	c, err := client.New(cfg, client.Options{Scheme: sch})
	if err != nil {
		return nil, err
	}
	ca, err := cache.New(cfg, cache.Options{Scheme: sch})
	if err != nil {
		return nil, err
	}
	f := &Fleet{o: o, c: c, cache: ca, q: workqueue.NewTypedDelayingQueue[string](), agents: map[string]*agent{}}
	f.version.Store(&o.AgentVersion)
	for _, n := range names {
		f.Add(n, "boot-"+n)
	}
	inf, err := ca.GetInformer(ctx, &v1alpha1.NodeSensor{})
	if err != nil {
		return nil, err
	}
	enqueue := func(obj any) {
		ns, ok := obj.(*v1alpha1.NodeSensor)
		if !ok {
			return
		}
		if o.OnSensor != nil {
			o.OnSensor(ns)
		}
		if f.agent(ns.Name) != nil {
			f.q.Add(ns.Name)
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, n any) { enqueue(n) },
	}); err != nil {
		return nil, err
	}
	f.wg.Add(1)
	go func() { defer f.wg.Done(); _ = ca.Start(ctx) }()
	if !ca.WaitForCacheSync(ctx) {
		return nil, fmt.Errorf("simulated agents: cache did not sync")
	}
	for w := 0; w < o.Workers; w++ {
		f.wg.Add(1)
		go func() { defer f.wg.Done(); f.worker(ctx) }()
	}
	f.wg.Add(1)
	go func() { defer f.wg.Done(); f.heartbeats(ctx) }()
	go func() { <-ctx.Done(); f.q.ShutDown() }()
	return f, nil
}

// Wait waits for every goroutine to end after the context is done.
func (f *Fleet) Wait() { f.wg.Wait() }

// Cache is the fleet's informer cache (NodeSensors; an observer may add informers to it).
func (f *Fleet) Cache() cache.Cache { return f.cache }

// Client is the fleet's own client (the agents' identity), for writes a test injects.
func (f *Fleet) Client() client.Client { return f.c }

// Add starts an agent on a node (a new node, or a node that came back with a new boot).
func (f *Fleet) Add(name, bootID string) {
	f.mu.Lock()
	facts := TypicalFacts
	if f.o.Facts != nil {
		facts = func(bootID string) *v1alpha1.ProbeFacts { return f.o.Facts(name, bootID) }
	}
	f.agents[name] = &agent{name: name, bootID: bootID, facts: facts}
	f.mu.Unlock()
	f.q.Add(name)
}

// Remove stops the agent of a node (the node is gone).
func (f *Fleet) Remove(name string) {
	f.mu.Lock()
	delete(f.agents, name)
	f.mu.Unlock()
}

// SetFacts replaces what a node's agent probes (from its next probe on, e.g. after Restart).
func (f *Fleet) SetFacts(name string, facts func(bootID string) *v1alpha1.ProbeFacts) {
	if a := f.agent(name); a != nil {
		a.mu.Lock()
		a.facts = facts
		a.mu.Unlock()
	}
}

// Restart plays the agent's pod restarting: it probes again and tests the current attempt again.
func (f *Fleet) Restart(name string) {
	if a := f.agent(name); a != nil {
		a.mu.Lock()
		a.probed, a.reported, a.testing = false, 0, 0
		a.mu.Unlock()
		f.q.Add(name)
	}
}

// SetAgentVersion plays the replacement of every agent's pod by one of a new agent version: each
// agent starts over (probes again and reports the new version), keeps the older agent's passed
// proof of the current attempt, as agent.keepProof does, and tests again only when the manager
// assigns a new attempt.
func (f *Fleet) SetAgentVersion(v string) {
	f.version.Store(&v)
	f.mu.Lock()
	defer f.mu.Unlock()
	for name, a := range f.agents {
		a.mu.Lock()
		a.probed, a.reported, a.testing = false, 0, 0
		a.mu.Unlock()
		f.q.Add(name)
	}
}

func (f *Fleet) agentVersion() string { return *f.version.Load() }

// Silence stops (true) or resumes (false) every agent's writes: a brownout between the agents
// and the API. Resumed agents report at once.
func (f *Fleet) Silence(on bool) {
	f.silent.Store(on)
	if !on {
		f.mu.Lock()
		for name := range f.agents {
			f.q.Add(name)
		}
		f.mu.Unlock()
	}
}

// SilenceNode stops (true) or resumes (false) one agent: its pod hangs or crash-loops.
func (f *Fleet) SilenceNode(name string, on bool) {
	if a := f.agent(name); a != nil {
		a.mu.Lock()
		a.silent = on
		a.mu.Unlock()
		f.q.Add(name)
	}
}

func (f *Fleet) agent(name string) *agent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.agents[name]
}

func (f *Fleet) worker(ctx context.Context) {
	for {
		name, shutdown := f.q.Get()
		if shutdown {
			return
		}
		if again := f.step(ctx, name); again > 0 && ctx.Err() == nil {
			f.q.AddAfter(name, again)
		}
		f.q.Done(name)
	}
}

// step does what the agent of one node does on seeing its NodeSensor; it returns when to
// look again (0: on the next change).
func (f *Fleet) step(ctx context.Context, name string) time.Duration {
	a := f.agent(name)
	if a == nil {
		return 0
	}
	if f.silent.Load() {
		return 0 // Silence(false) enqueues every agent again
	}
	ns := &v1alpha1.NodeSensor{}
	if err := f.cache.Get(ctx, client.ObjectKey{Name: name}, ns); err != nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.silent {
		return 0 // SilenceNode(false) enqueues it again
	}
	again := f.act(ctx, a, ns)
	if a.probed && !f.o.NoHeartbeat && time.Since(a.lastBeat) >= f.o.Heartbeat {
		if err := f.beat(ctx, a, ns); err == nil {
			a.lastBeat = time.Now()
			f.beats.Add(1)
		}
	}
	if a.probed && !f.o.NoHeartbeat {
		// Look again when the next heartbeat is due, so agents renew one period apart.
		if next := max(f.o.Heartbeat-time.Since(a.lastBeat), 200*time.Millisecond); again == 0 || next < again {
			again = next
		}
	}
	return again
}

// act reports the facts to a new NodeSensor and a verdict for a new attempt.
func (f *Fleet) act(ctx context.Context, a *agent, ns *v1alpha1.NodeSensor) time.Duration {
	if a.uid != ns.UID {
		// A new NodeSensor (the first, or one created again): report the facts to it.
		a.uid, a.probed, a.reported, a.testing = ns.UID, false, 0, 0
	}
	spec := ns.Spec
	// Facts first, as the real agent reports them (agent.wake), unless the NodeSensor has none
	// yet and a driver predicted for it: then they go with the verdict.
	if !a.probed && (spec.Driver == "" || ns.Status.Probe != nil) {
		facts := a.facts(a.bootID)
		if err := f.report(ctx, ns, func(st *v1alpha1.NodeSensorStatus) { st.Probe = facts }); err != nil {
			return 200 * time.Millisecond
		}
		a.probed, a.lastBeat = true, time.Now()
		f.probes.Add(1)
		return 0
	}
	if spec.Driver == "" || spec.Attempt == a.reported {
		return 0
	}
	if a.reported == 0 && a.testing == 0 && provenByOtherAgent(ns, a.bootID, f.agentVersion()) {
		// A new agent version: the older agent's proof stands until the manager asks again.
		a.reported = spec.Attempt
		return 0
	}
	if a.testing != spec.Attempt {
		a.testing, a.testStart = spec.Attempt, time.Now()
	}
	if left := f.o.SelfTestDelay - time.Since(a.testStart); left > 0 {
		return left
	}
	verdict := Honest(spec, a.bootID, f.agentVersion(), a.testStart)
	if f.o.Verdict != nil {
		if v := f.o.Verdict(a.name, spec, verdict); v != nil {
			verdict = v
		}
	}
	var facts *v1alpha1.ProbeFacts
	if !a.probed {
		facts = a.facts(a.bootID)
	}
	if err := f.report(ctx, ns, func(st *v1alpha1.NodeSensorStatus) {
		st.SelfTest = verdict
		if facts != nil {
			st.Probe = facts
		}
	}); err != nil {
		return 200 * time.Millisecond
	}
	if facts != nil {
		a.probed = true
		f.probes.Add(1)
	}
	a.reported, a.lastBeat = spec.Attempt, time.Now()
	f.verdicts.Add(1)
	return 0
}

// provenByOtherAgent reports whether the current attempt passed its self-test in this boot under
// another agent version (agent/agent.go provenByOtherAgent).
func provenByOtherAgent(ns *v1alpha1.NodeSensor, bootID, version string) bool {
	t := ns.Status.SelfTest
	return t != nil && t.Result == v1alpha1.SelfTestPassed && t.Attempt == ns.Spec.Attempt &&
		t.Driver == ns.Spec.Driver && t.BootID == bootID && t.AgentVersion != version
}

// Honest is the verdict of a self-test that passed every check the spec asks for (every check
// when it names none).
func Honest(spec v1alpha1.NodeSensorSpec, bootID, agentVersion string, start time.Time) *v1alpha1.SelfTestStatus {
	names := spec.SelfTest.Checks
	if len(names) == 0 {
		names = v1alpha1.AllChecks
	}
	checks := make([]v1alpha1.CheckResult, 0, len(names))
	for _, c := range names {
		checks = append(checks, v1alpha1.CheckResult{Name: c, Result: v1alpha1.SelfTestPassed, Expected: "expected", Observed: "expected", Method: "CORE"})
	}
	s, fin := metav1.NewTime(start), metav1.Now()
	return &v1alpha1.SelfTestStatus{
		Driver: spec.Driver, Attempt: spec.Attempt, Result: v1alpha1.SelfTestPassed, BootID: bootID,
		StartTime: &s, FinishTime: &fin, Checks: checks, AgentVersion: agentVersion,
	}
}

// KernelFailure turns a verdict into that of a kernel on which the sensor reports the upper
// layer as lower (falco#3286's shape): ExeUpperLayer failed, and with it the self-test.
func KernelFailure(st *v1alpha1.SelfTestStatus) {
	st.Result, st.Reason = v1alpha1.SelfTestFailed, "CheckFailed"
	failed := 0
	for i := range st.Checks {
		if st.Checks[i].Name == v1alpha1.CheckExeUpperLayer {
			st.Checks[i].Result, st.Checks[i].Observed = v1alpha1.SelfTestFailed, "lower layer"
		}
		if st.Checks[i].Result == v1alpha1.SelfTestFailed {
			failed++
		}
	}
	st.Message = fmt.Sprintf("%d of %d checks failed: ExeUpperLayer: reported lower layer", failed, len(st.Checks))
}

// report patches the status with a change and a fresh heartbeat, as agent.report does.
func (f *Fleet) report(ctx context.Context, ns *v1alpha1.NodeSensor, change func(*v1alpha1.NodeSensorStatus)) error {
	base := ns.DeepCopy()
	change(&ns.Status)
	if !f.o.NoHeartbeat {
		now := metav1.Now()
		ns.Status.HeartbeatTime = &now
	}
	ns.Status.AgentVersion = f.agentVersion()
	f.writes.Add(1)
	if err := f.c.Status().Patch(ctx, ns, client.MergeFrom(base)); err != nil {
		f.writeErrors.Add(1)
		return err
	}
	if f.o.OnWrite != nil {
		f.o.OnWrite(ns.DeepCopy())
	}
	return nil
}

// beat renews a node's heartbeat: its Lease, or its NodeSensor status without a Lease namespace.
func (f *Fleet) beat(ctx context.Context, a *agent, ns *v1alpha1.NodeSensor) error {
	if f.o.LeaseNamespace == "" {
		return f.report(ctx, ns, func(*v1alpha1.NodeSensorStatus) {})
	}
	if a.lease == nil {
		a.lease = &heartbeat.Renewer{Client: f.c, Namespace: f.o.LeaseNamespace, Node: ns.Name, Holder: "simagent-" + ns.Name}
	}
	f.writes.Add(1)
	err := a.lease.Renew(ctx, time.Now())
	if err != nil {
		f.writeErrors.Add(1)
	}
	return err
}

// heartbeats wakes every agent a few times per period; step renews a heartbeat that is due, so
// the writes spread over the workers.
func (f *Fleet) heartbeats(ctx context.Context) {
	t := time.NewTicker(f.o.Heartbeat / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if f.silent.Load() {
			continue
		}
		f.mu.Lock()
		for name := range f.agents {
			f.q.Add(name)
		}
		f.mu.Unlock()
	}
}

// TypicalFacts are those of a node where every driver can work (modules allowed, no lockdown).
func TypicalFacts(bootID string) *v1alpha1.ProbeFacts {
	yes := v1alpha1.BoolFact{Answer: v1alpha1.AnswerYes, Source: "simagent"}
	no := v1alpha1.BoolFact{Answer: v1alpha1.AnswerNo, Source: "simagent"}
	str := func(v string) v1alpha1.StringFact { return v1alpha1.StringFact{Value: v, Source: "simagent"} }
	now := metav1.Now()
	return &v1alpha1.ProbeFacts{
		Kernel:     v1alpha1.KernelFacts{Release: str("6.1.0-28-cloud-amd64"), Version: str("6.1.119"), Architecture: str("amd64"), BootID: str(bootID)},
		BTF:        v1alpha1.BTFFacts{Vmlinux: yes, OverlayTypes: str(v1alpha1.OverlayTypesModule)},
		EBPF:       v1alpha1.EBPFFacts{TPBTF: yes, RawTracepoint: yes, RingBuffer: yes},
		Lockdown:   str("none"),
		Modules:    v1alpha1.ModuleFacts{Supported: yes, Disabled: no},
		SecureBoot: no,
		Overlayfs:  yes,
		Distro:     v1alpha1.DistroFacts{ID: "debian", VersionID: "12", Source: "simagent"},
		Cloud:      str("aws"),
		ProbeTime:  &now,
	}
}
