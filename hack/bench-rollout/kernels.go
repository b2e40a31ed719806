package main

// The mixed-kernel mode: the simulated nodes run several kernels, and on some of them the
// profile's first driver fails its self-test on every node (falco#3286's shape: the upper layer
// reported as lower), so the rollout's time to converge and its failed attempts can be compared
// with the fleet's learning on and off:
//
//	hack/bench-rollout.sh -nodes 1000 -kernels 8 -bad-kernels 2 -learning Shared
//	hack/bench-rollout.sh -nodes 1000 -kernels 8 -bad-kernels 2 -learning Off

import (
	"flag"
	"fmt"
	"io"
	"sync"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/simagent"
)

var (
	kernelGroups = flag.Int("kernels", 0, "mixed-kernel mode: the nodes run this many kernel releases, round robin (0: every node the same kernel)")
	badKernels   = flag.Int("bad-kernels", 1, "in mixed-kernel mode, on how many of the kernels modern_ebpf fails its self-test on every node (CheckFailed)")
	learning     = flag.String("learning", string(v1alpha1.FleetLearningShared), "the profile's spec.fleet.learning: Shared or Off")
)

// kernelRelease is the kernel of kernel group i.
func kernelRelease(i int) string { return fmt.Sprintf("6.1.0-%d-cloud-amd64", 20+i) }

// nodeKernel is the kernel node i runs (simagent.TypicalFacts' unless in mixed-kernel mode).
func nodeKernel(i int) string {
	if *kernelGroups <= 0 {
		return simagent.TypicalFacts("").Kernel.Release.Value
	}
	return kernelRelease(i % *kernelGroups)
}

// mixed counts what the mixed-kernel mode did.
type mixed struct {
	mu     sync.Mutex
	failed map[string]bool // node/attempt of each failed self-test
	bad    map[string]bool // nodes on a bad kernel
}

var mixedRun = &mixed{failed: map[string]bool{}, bad: map[string]bool{}}

// mixedKernels gives the agents their kernels and the bad kernels' failing verdicts.
func mixedKernels(o *simagent.Options, names []string) {
	if *kernelGroups <= 0 {
		return
	}
	kernel := map[string]string{}
	for i, n := range names {
		kernel[n] = nodeKernel(i)
		if i%*kernelGroups < *badKernels {
			mixedRun.bad[n] = true
		}
	}
	o.Facts = func(node, bootID string) *v1alpha1.ProbeFacts {
		f := simagent.TypicalFacts(bootID)
		f.Kernel.Release.Value = kernel[node]
		return f
	}
	o.Verdict = func(node string, spec v1alpha1.NodeSensorSpec, honest *v1alpha1.SelfTestStatus) *v1alpha1.SelfTestStatus {
		if !mixedRun.bad[node] || spec.Driver != v1alpha1.DriverModernEBPF {
			return honest
		}
		simagent.KernelFailure(honest)
		mixedRun.mu.Lock()
		mixedRun.failed[fmt.Sprintf("%s/%d", node, spec.Attempt)] = true
		mixedRun.mu.Unlock()
		return honest
	}
}

// printMixed reports the failed attempts of the mixed-kernel mode.
func printMixed(w io.Writer) {
	if *kernelGroups <= 0 {
		return
	}
	mixedRun.mu.Lock()
	defer mixedRun.mu.Unlock()
	fmt.Fprintf(w, "mixed kernels:    %d kernels, modern_ebpf fails on every node of %d of them (%d nodes); fleet learning %s\n",
		*kernelGroups, min(*badKernels, *kernelGroups), len(mixedRun.bad), *learning)
	fmt.Fprintf(w, "  failed attempts: %d self-tests failed on the bad kernels (%.2f per bad node)\n",
		len(mixedRun.failed), float64(len(mixedRun.failed))/float64(max(len(mixedRun.bad), 1)))
}
