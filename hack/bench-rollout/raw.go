package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/internal/selection"
	"github.com/driverpilot/driverpilot/internal/simagent"
	"github.com/driverpilot/driverpilot/internal/version"
)

// rawCondition is the scratch node condition the raw-rate measurement writes and removes.
const rawCondition = "BenchRawWrite"

// rawLevel is the raw write rate at one number of concurrent writers.
type rawLevel struct {
	workers int
	writes  int
	failed  int
	elapsed time.Duration
}

func (l rawLevel) rate() float64 { return rate(l.writes-l.failed, l.elapsed) }

// rawResult is the API server's raw write rate: the best level.
type rawResult struct {
	items  int
	levels []rawLevel
	best   rawLevel
}

// rawWritesPerItem is what one rollout node costs at least: the manager creates its NodeSensor
// with the driver predicted from a node like it, the agent reports facts and verdict, the manager
// sets the node's condition. (The first node of each kind costs two writes more: its probe and
// its decision are written apart.)
const rawWritesPerItem = 3

// measureRaw measures, before the manager starts, how many writes per second the API server
// completes when they are the writes a rollout makes per node, on scratch NodeSensors (deleted
// afterwards, untimed) and a scratch condition on the bench's Nodes (removed afterwards,
// untimed). Each item is the three writes of one node in order; items run on `workers`
// goroutines sharing one client without client-side rate limits. The admin user writes them,
// so the audit log (manager and agents only) does not count them.
func measureRaw(ctx context.Context, cfg *rest.Config, sch *runtime.Scheme, nodes []string, items int, levels []int) (rawResult, error) {
	res := rawResult{items: items}
	c, err := rawClient(cfg, sch)
	if err != nil {
		return res, err
	}
	spec, facts, err := rawDecision()
	if err != nil {
		return res, err
	}
	for li, workers := range levels {
		prefix := fmt.Sprintf("bench-raw-%d-", li)
		l, err := rawLevelRun(ctx, c, nodes, prefix, items, workers, spec, facts)
		cleanErr := rawCleanup(ctx, c, nodes, prefix, items)
		if err != nil {
			return res, err
		}
		if cleanErr != nil {
			return res, cleanErr
		}
		res.levels = append(res.levels, l)
		if l.rate() > res.best.rate() {
			res.best = l
		}
		logf("raw API write rate: %d workers: %d writes in %.2fs = %.0f/s (%d failed)", workers, l.writes, l.elapsed.Seconds(), l.rate(), l.failed)
	}
	return res, nil
}

func rawClient(cfg *rest.Config, sch *runtime.Scheme) (client.Client, error) {
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst = -1, 0 // no client-side rate limit
	return client.New(c, client.Options{Scheme: sch})
}

// rawDecision is the spec a manager would assign on simagent.TypicalFacts: the selection
// engine's decision with the embedded known issues, so candidates and reasons are as long as in
// a rollout.
func rawDecision() (v1alpha1.NodeSensorSpec, *v1alpha1.ProbeFacts, error) {
	facts := simagent.TypicalFacts("boot-raw")
	issues, err := knownissues.Default()
	if err != nil {
		return v1alpha1.NodeSensorSpec{}, nil, err
	}
	d, err := selection.Decide(selection.Input{Facts: *facts, Sensor: v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin}, KnownIssues: issues})
	if err != nil {
		return v1alpha1.NodeSensorSpec{}, nil, err
	}
	return v1alpha1.NodeSensorSpec{
		Profile: profileName, Driver: d.Driver, Candidates: d.Candidates, Reasons: d.Reasons, Attempt: 1,
		Sensor: v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin},
	}, facts, nil
}

func rawLevelRun(ctx context.Context, c client.Client, nodes []string, prefix string, items, workers int, spec v1alpha1.NodeSensorSpec, facts *v1alpha1.ProbeFacts) (rawLevel, error) {
	l := rawLevel{workers: workers}
	var writes, failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	write := func(err error) bool {
		writes.Add(1)
		if err != nil {
			failed.Add(1)
			errOnce.Do(func() { firstErr = err })
			return false
		}
		return true
	}
	work := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				rawItem(ctx, c, nodes[i%len(nodes)], fmt.Sprintf("%s%05d", prefix, i), spec, facts, write)
			}
		}()
	}
	for i := 0; i < items; i++ {
		select {
		case work <- i:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	l.elapsed = time.Since(start)
	l.writes, l.failed = int(writes.Load()), int(failed.Load())
	if err := ctx.Err(); err != nil {
		return l, err
	}
	if l.failed > l.writes/10 {
		return l, fmt.Errorf("raw writes: %d of %d failed, first: %w", l.failed, l.writes, firstErr)
	}
	return l, nil
}

// rawItem makes the three writes of one node; write counts each and says whether to go on.
func rawItem(ctx context.Context, c client.Client, node, name string, spec v1alpha1.NodeSensorSpec, facts *v1alpha1.ProbeFacts, write func(error) bool) {
	// 1. The manager creates the NodeSensor with the driver predicted from a node like it.
	ns := &v1alpha1.NodeSensor{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"security.driverpilot.io/profile": profileName}},
		Spec:       *spec.DeepCopy(),
	}
	ns.Spec.PredictedFrom = "bench-node-00000"
	if !write(c.Create(ctx, ns)) {
		return
	}
	// 2. The agent reports its facts and the verdict (a merge patch of the status, as agent.report).
	base := ns.DeepCopy()
	ns.Status.Probe, ns.Status.AgentVersion = facts, version.Version
	ns.Status.SelfTest = simagent.Honest(ns.Spec, "boot-raw", version.Version, time.Now())
	fin := metav1.Now()
	ns.Status.HeartbeatTime = &fin
	if !write(c.Status().Patch(ctx, ns, client.MergeFrom(base))) {
		return
	}
	// 3. The manager sets a node condition (a strategic-merge status patch keyed by type, as
	// setNodeCondition; a scratch type, removed afterwards).
	cond := corev1.NodeCondition{
		Type: rawCondition, Status: corev1.ConditionTrue, Reason: "Verified",
		Message:           fmt.Sprintf("Runtime security verified with driver %s: self-test passed (%d checks), attempt 1", spec.Driver, len(ns.Status.SelfTest.Checks)),
		LastHeartbeatTime: fin, LastTransitionTime: fin,
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		write(err)
		return
	}
	write(c.Status().Patch(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, client.RawPatch(types.StrategicMergePatchType, patch)))
}

// rawCleanup deletes the level's scratch NodeSensors and removes the scratch condition from the
// nodes it touched.
func rawCleanup(ctx context.Context, c client.Client, nodes []string, prefix string, items int) error {
	touched := min(items, len(nodes))
	work := make(chan func() error)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range work {
				if err := f(); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	del := fmt.Sprintf(`{"status":{"conditions":[{"type":%q,"$patch":"delete"}]}}`, rawCondition)
	for i := 0; i < items; i++ {
		name := fmt.Sprintf("%s%05d", prefix, i)
		fs := []func() error{func() error {
			return client.IgnoreNotFound(c.Delete(ctx, &v1alpha1.NodeSensor{ObjectMeta: metav1.ObjectMeta{Name: name}}))
		}}
		if i < touched {
			node := nodes[i]
			fs = append(fs, func() error {
				return c.Status().Patch(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, client.RawPatch(types.StrategicMergePatchType, []byte(del)))
			})
		}
		for _, f := range fs {
			select {
			case work <- f:
			case <-ctx.Done():
			}
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return fmt.Errorf("raw writes cleanup: %w", err)
	default:
	}
	return ctx.Err()
}
