package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// steadyWindow is the quiet time after convergence: the agents renew their heartbeats and the
// manager does whatever it does with a converged profile. Writes come from the audit log
// afterwards; sizes are sampled at its end.
type steadyWindow struct {
	from, to                 time.Time
	cpu0, cpu1               float64 // the manager's user+sys CPU seconds at both ends
	reconciles0, reconciles1 float64 // controller_runtime_reconcile_total at both ends
	sizes                    map[string]objectSize
	left                     int // times a node left Verified after convergence + settle until the window's end
}

// objectSize is the mean JSON size of a sample of one resource's objects as the API returns
// them (managed fields included): the size a write of that resource stores.
type objectSize struct {
	bytes   int // mean JSON size
	bare    int // mean JSON size without managed fields
	sampled int
	err     string
}

// sizeSamples maps the audit log's resource names to the kind read back to size their writes.
var sizeSamples = map[string]struct {
	gvk        schema.GroupVersionKind
	namespaced bool
}{
	"leases":                  {schema.GroupVersionKind{Group: "coordination.k8s.io", Version: "v1", Kind: "LeaseList"}, true},
	"nodesensors":             {schema.GroupVersionKind{Group: "security.driverpilot.io", Version: "v1alpha1", Kind: "NodeSensorList"}, false},
	"nodes":                   {schema.GroupVersionKind{Version: "v1", Kind: "NodeList"}, false},
	"securityprofiles":        {schema.GroupVersionKind{Group: "security.driverpilot.io", Version: "v1alpha1", Kind: "SecurityProfileList"}, false},
	"events":                  {schema.GroupVersionKind{Group: "events.k8s.io", Version: "v1", Kind: "EventList"}, false},
	"daemonsets":              {schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "DaemonSetList"}, true},
	"nodesensors/status":      {schema.GroupVersionKind{Group: "security.driverpilot.io", Version: "v1alpha1", Kind: "NodeSensorList"}, false},
	"nodes/status":            {schema.GroupVersionKind{Version: "v1", Kind: "NodeList"}, false},
	"securityprofiles/status": {schema.GroupVersionKind{Group: "security.driverpilot.io", Version: "v1alpha1", Kind: "SecurityProfileList"}, false},
}

// sampleSizes reads back up to 20 objects of each resource a write may touch.
func sampleSizes(ctx context.Context, c client.Client) map[string]objectSize {
	out := map[string]objectSize{}
	for res, s := range sizeSamples {
		l := &unstructured.UnstructuredList{}
		l.SetGroupVersionKind(s.gvk)
		opts := []client.ListOption{client.Limit(20)}
		if s.namespaced {
			opts = append(opts, client.InNamespace(namespace))
		}
		if s.gvk.Kind == "NodeList" {
			opts = append(opts, client.HasLabels{nodeLabelKey})
		}
		if err := c.List(ctx, l, opts...); err != nil {
			out[res] = objectSize{err: err.Error()}
			continue
		}
		var sz objectSize
		for _, it := range l.Items {
			b, err := json.Marshal(it.Object)
			if err != nil {
				continue
			}
			it.SetManagedFields(nil)
			bare, err := json.Marshal(it.Object)
			if err != nil {
				continue
			}
			sz.bytes += len(b)
			sz.bare += len(bare)
			sz.sampled++
		}
		if sz.sampled > 0 {
			sz.bytes /= sz.sampled
			sz.bare /= sz.sampled
		}
		out[res] = sz
	}
	return out
}

// steadyFigures are the steady window's figures, per node and minute.
type steadyFigures struct {
	window                        windowCounts
	minutes                       float64
	writesPerNodeMin              float64
	bytesPerNodeMin               float64
	bareBytesPerNodeMin           float64 // the same without managed fields
	managerWrites, agentWrites    int
	unsized                       []string // resources written without a sampled size
	reconciles, cpu, cpuPerMinute float64
}

func (s steadyWindow) figures(a auditCounts, nodes int) steadyFigures {
	f := steadyFigures{window: a.window(s.from, s.to), minutes: s.to.Sub(s.from).Minutes()}
	f.managerWrites, f.agentWrites = f.window.total()
	var bytes, bare float64
	for _, m := range []map[string]int{f.window.manager, f.window.agents} {
		for res, k := range m {
			sz, ok := s.sizes[res]
			if !ok || sz.sampled == 0 {
				f.unsized = append(f.unsized, res)
				continue
			}
			bytes += float64(k * sz.bytes)
			bare += float64(k * sz.bare)
		}
	}
	if f.minutes > 0 {
		f.writesPerNodeMin = float64(f.managerWrites+f.agentWrites) / float64(nodes) / f.minutes
		f.bytesPerNodeMin = bytes / float64(nodes) / f.minutes
		f.bareBytesPerNodeMin = bare / float64(nodes) / f.minutes
		f.cpu = s.cpu1 - s.cpu0
		f.cpuPerMinute = f.cpu / f.minutes
	}
	f.reconciles = s.reconciles1 - s.reconciles0
	return f
}

// metricSum is the sum of every sample of the manager's metric (all label sets), -1 when the
// metrics endpoint cannot be read.
func (m *managerProc) metricSum(name string) float64 {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + m.metricsAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		f := strings.Fields(l)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// waitLeases waits until every agent renewed its heartbeat once, so its Lease exists and the
// steady window sees renewals, not the one-time creations (at most two heartbeat periods).
func waitLeases(ctx context.Context, s *sim, o options) {
	deadline := time.Now().Add(2 * o.heartbeat)
	for s.Stats().Beats < int64(o.nodes) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	logf("steady state: %d agent heartbeats so far (%d nodes)", s.Stats().Beats, o.nodes)
}

// steadyLength rounds the steady window to whole heartbeat periods (at least one): every agent
// renews once per period, so such a window holds one renewal per agent and period whatever the
// agents' phases. A window of 2.25 periods would count 2 or 3 per agent, and a fleet that
// converged within seconds renews nearly in step, so the count swung with where the window began.
func steadyLength(want, heartbeat time.Duration) time.Duration {
	if heartbeat <= 0 {
		return want
	}
	periods := max(1, (want+heartbeat/2)/heartbeat)
	return periods * heartbeat
}
