package prediction

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

func TestKeyOf(t *testing.T) {
	node := func(kernel, os, arch, provider string) *corev1.Node {
		n := &corev1.Node{}
		n.Status.NodeInfo = corev1.NodeSystemInfo{KernelVersion: kernel, OSImage: os, Architecture: arch}
		n.Spec.ProviderID = provider
		return n
	}
	a := KeyOf(node("6.1.0-28-cloud-amd64", "Debian GNU/Linux 12 (bookworm)", "amd64", "aws:///eu-west-1a/i-1"))
	if a == "" {
		t.Fatal("a node with a kernel has a key")
	}
	if b := KeyOf(node("6.1.0-28-cloud-amd64", "Debian GNU/Linux 12 (bookworm)", "amd64", "aws:///eu-west-1b/i-2")); b != a {
		t.Errorf("instances of one cloud differ: %q vs %q", a, b)
	}
	for _, other := range []*corev1.Node{
		node("6.1.0-29-cloud-amd64", "Debian GNU/Linux 12 (bookworm)", "amd64", "aws:///x/i-1"),
		node("6.1.0-28-cloud-amd64", "Ubuntu 22.04.4 LTS", "amd64", "aws:///x/i-1"),
		node("6.1.0-28-cloud-amd64", "Debian GNU/Linux 12 (bookworm)", "arm64", "aws:///x/i-1"),
		node("6.1.0-28-cloud-amd64", "Debian GNU/Linux 12 (bookworm)", "amd64", "gce://p/z/i-1"),
	} {
		if KeyOf(other) == a {
			t.Errorf("%+v has the same key as the first node", other.Status.NodeInfo)
		}
	}
	if KeyOf(node("", "Debian", "amd64", "")) != "" {
		t.Error("a node without a kernel must have no key")
	}
}

func TestDecide(t *testing.T) {
	const (
		modern = v1alpha1.DriverModernEBPF
		ebpf   = v1alpha1.DriverEBPF
	)
	miss := func(names ...string) []Missing {
		var out []Missing
		for _, n := range names {
			out = append(out, Missing{Name: n, Key: Key(n[:1])})
		}
		return out
	}
	cases := []struct {
		name    string
		known   []Known
		provenB bool // b0 proved modern_ebpf as its first choice
		want    Plan
	}{{
		name: "nobody tried a kind: its first node is created, the rest wait",
		want: Plan{Predicted: map[string]Sample{}, Create: []string{"a1", "b1"}, Deferred: []string{"a2", "b2"}},
	}, {
		name:  "a kind that predicts nothing and is not busy creates every node",
		known: []Known{{Name: "a0", Key: "a", Driver: "", Busy: false}, {Name: "b0", Key: "b", Driver: ebpf, Proven: true, Failed: []v1alpha1.Driver{modern}}},
		want:  Plan{Predicted: map[string]Sample{}, Create: []string{"a1", "a2", "b1", "b2"}},
	}, {
		name: "a node whose own first choice is another, still verifying, takes it back", provenB: true,
		known: []Known{
			{Name: "a0", Key: "a", Driver: modern, Proven: true, FirstChoice: true, Decided: true},
			{Name: "a7", Key: "a", Driver: ebpf, FirstChoice: true, Decided: true},
		},
		want: Plan{Predicted: map[string]Sample{"b1": {modern, "b0"}, "b2": {modern, "b0"}}, Create: []string{"a1", "a2"}},
	}, {
		name: "a mispredicted node takes its kind's prediction back", provenB: true,
		known: []Known{
			{Name: "a0", Key: "a", Driver: modern, Proven: true, FirstChoice: true},
			{Name: "a7", Key: "a", Driver: modern, Mispredicted: true},
		},
		want: Plan{Predicted: map[string]Sample{"b1": {modern, "b0"}, "b2": {modern, "b0"}}, Create: []string{"a1", "a2"}},
	}, {
		name:  "a proven first choice predicts its kind; a kind still busy waits",
		known: []Known{{Name: "a0", Key: "a", Driver: modern, Proven: true, FirstChoice: true}, {Name: "b0", Key: "b", Busy: true}},
		want:  Plan{Predicted: map[string]Sample{"a1": {modern, "a0"}, "a2": {modern, "a0"}}, Deferred: []string{"b1", "b2"}},
	}, {
		name: "a fallback proves no prediction: the kind decides node by node", provenB: true,
		known: []Known{{Name: "a0", Key: "a", Driver: ebpf, Proven: true, Failed: []v1alpha1.Driver{modern}}},
		want:  Plan{Predicted: map[string]Sample{"b1": {modern, "b0"}, "b2": {modern, "b0"}}, Create: []string{"a1", "a2"}},
	}, {
		name: "proven nodes that disagree predict nothing", provenB: true,
		known: []Known{
			{Name: "a0", Key: "a", Driver: modern, Proven: true, FirstChoice: true},
			{Name: "a9", Key: "a", Driver: ebpf, Proven: true, FirstChoice: true},
		},
		want: Plan{Predicted: map[string]Sample{"b1": {modern, "b0"}, "b2": {modern, "b0"}}, Create: []string{"a1", "a2"}},
	}, {
		name: "a like node that saw the driver fail takes the prediction back", provenB: true,
		known: []Known{
			{Name: "a0", Key: "a", Driver: modern, Proven: true, FirstChoice: true},
			{Name: "a8", Key: "a", Driver: ebpf, Failed: []v1alpha1.Driver{modern}, Busy: true},
		},
		want: Plan{Predicted: map[string]Sample{"b1": {modern, "b0"}, "b2": {modern, "b0"}}, Deferred: []string{"a1", "a2"}},
	}}
	for _, c := range cases {
		if c.provenB {
			c.known = append(c.known, Known{Name: "b0", Key: "b", Driver: modern, Proven: true, FirstChoice: true})
		}
		t.Run(c.name, func(t *testing.T) {
			got := Decide(c.known, miss("a1", "a2", "b1", "b2"))
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("got %+v\nwant %+v", got, c.want)
			}
		})
	}
	// A node without a key is always created at once.
	got := Decide(nil, []Missing{{Name: "x"}})
	if !reflect.DeepEqual(got.Create, []string{"x"}) || len(got.Deferred) != 0 {
		t.Errorf("a node without a key: %+v", got)
	}
}
