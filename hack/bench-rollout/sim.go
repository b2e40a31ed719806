package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/heartbeat"
	"github.com/driverpilot/driverpilot/internal/simagent"
	"github.com/driverpilot/driverpilot/internal/version"
)

// sim is the simulated agents (internal/simagent) and an observer on their informer cache.
type sim struct {
	*simagent.Fleet
	obs *observer
}

func startSim(ctx context.Context, cfg *rest.Config, sch *runtime.Scheme, names []string, o options) (*sim, error) {
	obs := newObserver(len(names))
	opts := simagent.Options{
		SelfTestDelay: o.selfTestDelay, Heartbeat: o.heartbeat, Workers: o.agentWorkers,
		AgentVersion: version.Version, OnSensor: obs.sensor, LeaseNamespace: namespace,
	}
	mixedKernels(&opts, names)
	fleet, err := simagent.Start(ctx, cfg, sch, names, opts)
	if err != nil {
		return nil, err
	}
	nodeInf, err := fleet.Cache().GetInformer(ctx, &corev1.Node{})
	if err != nil {
		return nil, err
	}
	if _, err := nodeInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { obs.node(o) },
		UpdateFunc: func(_, n any) { obs.node(n) },
	}); err != nil {
		return nil, err
	}
	if !fleet.Cache().WaitForCacheSync(ctx) {
		return nil, fmt.Errorf("observer: cache did not sync")
	}
	obs.leaseRenewed = func(node string) time.Time {
		l := &coordinationv1.Lease{}
		if err := fleet.Client().Get(ctx, client.ObjectKey{Namespace: namespace, Name: heartbeat.LeaseName(node)}, l); err != nil {
			return time.Time{}
		}
		return heartbeat.RenewTime(l)
	}
	return &sim{Fleet: fleet, obs: obs}, nil
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

	// left counts nodes that left Verified after the profile's creation; up follows an upgrade.
	left int
	up   upgradeObs
	// beats are the status heartbeats the informer saw; leaseRenewed reads a node's Lease (both
	// say why a node left Verified).
	beats        map[string]time.Time
	leaseRenewed func(node string) time.Time
}

// upgradeObs follows an upgrade: nodes verified again by the new agent version.
type upgradeObs struct {
	version  string
	left     int // nodes that left Verified during the upgrade
	leftAt   []string
	why      map[string]int // condition status/reason a node left Verified for: count
	from     time.Time
	proven   map[string]bool // the current attempt passed under the new version
	allAt    time.Time
	allReady chan struct{}
}

type progressSnap struct {
	sensors, assigned, ready, maxInFlight int
	left                                  int
	maxAttempt                            int32
	firstSensor, firstAssign, firstReady  time.Duration
}

func newObserver(n int) *observer {
	return &observer{n: n, ready: map[string]bool{}, inFlight: map[string]bool{}, assigned: map[string]bool{}, sensors: map[string]bool{}, allReady: make(chan struct{}), beats: map[string]time.Time{}}
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
	if o.up.version != "" {
		st := ns.Status.SelfTest
		if st != nil && st.AgentVersion == o.up.version && st.Result == v1alpha1.SelfTestPassed && st.Attempt == ns.Spec.Attempt {
			o.up.proven[ns.Name] = true
		} else {
			delete(o.up.proven, ns.Name)
		}
		o.checkUpgraded()
	}
	if ns.Status.HeartbeatTime != nil {
		o.beats[ns.Name] = ns.Status.HeartbeatTime.Time
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
	verified, cond := false, "no condition"
	for _, c := range n.Status.Conditions {
		if c.Type == v1alpha1.NodeConditionRuntimeSecurityReady {
			verified = c.Status == corev1.ConditionTrue && c.Reason == "Verified"
			cond = string(c.Status) + "/" + c.Reason
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
		o.left++
		if o.up.version != "" {
			o.up.left++
			o.up.why[cond]++
			if len(o.up.leftAt) < 5 {
				lease := "no Lease"
				if o.leaseRenewed != nil {
					if t := o.leaseRenewed(n.Name); !t.IsZero() {
						lease = fmt.Sprintf("Lease renewed %.0fs before", time.Since(t).Seconds())
					}
				}
				o.up.leftAt = append(o.up.leftAt, fmt.Sprintf("%s to %s at +%.1fs (status heartbeat %.0fs before, %s)",
					n.Name, cond, time.Since(o.up.from).Seconds(), time.Since(o.beats[n.Name]).Seconds(), lease))
			}
		}
	}
	if o.up.version != "" {
		o.checkUpgraded()
	}
}

// startUpgrade starts following an upgrade to agent version v.
func (o *observer) startUpgrade(v string) <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.up = upgradeObs{version: v, proven: map[string]bool{}, why: map[string]int{}, from: time.Now(), allReady: make(chan struct{})}
	return o.up.allReady
}

// checkUpgraded closes the upgrade's channel once every node is Verified and its current
// attempt passed under the new version. o.mu is held.
func (o *observer) checkUpgraded() {
	if o.up.allAt.IsZero() && len(o.up.proven) == o.n && len(o.ready) == o.n {
		o.up.allAt = time.Now()
		close(o.up.allReady)
	}
}

// upgradeSnap is the upgrade's progress: nodes proven by the new version, nodes that left
// Verified (a few named), when all were proven again.
func (o *observer) upgradeSnap() (proven, left int, leftAt []string, why map[string]int, allAt time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	why = make(map[string]int, len(o.up.why))
	for k, v := range o.up.why {
		why[k] = v
	}
	return len(o.up.proven), o.up.left, append([]string(nil), o.up.leftAt...), why, o.up.allAt
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
		sensors: len(o.sensors), assigned: len(o.assigned), ready: len(o.ready), maxInFlight: o.maxIn, maxAttempt: o.maxAtt, left: o.left,
		firstSensor: since(o.first.sensor), firstAssign: since(o.first.assign), firstReady: since(o.first.ready),
	}
}
