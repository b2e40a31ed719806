package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// profileRollout records for d, from now, the CPU profiles of the API server (its /debug/pprof
// endpoint, on by default) and of this process (the simulated agents and the observer) into
// dir/apiserver.pprof and dir/bench.pprof, so a run shows where the cores the rollout is bound by
// go. It runs in the background; the channel says when both are written.
func profileRollout(ctx context.Context, cfg *rest.Config, dir string, d time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() { done <- profileBoth(ctx, cfg, dir, d) }()
	return done
}

func profileBoth(ctx context.Context, cfg *rest.Config, dir string, d time.Duration) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	self, err := os.Create(filepath.Join(dir, "bench.pprof"))
	if err != nil {
		return err
	}
	defer self.Close()
	if err := pprof.StartCPUProfile(self); err != nil {
		return err
	}
	// The API server's profile takes d: this process's covers the same time.
	body, err := cs.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/profile").
		Param("seconds", strconv.Itoa(int(d.Seconds()))).Timeout(d + 30*time.Second).DoRaw(ctx)
	pprof.StopCPUProfile()
	if err != nil {
		return fmt.Errorf("API server CPU profile: %w", err)
	}
	path := filepath.Join(dir, "apiserver.pprof")
	if err := os.WriteFile(path, body, 0o644); err != nil {
		return err
	}
	logf("CPU profiles (%s of the rollout): %s, %s", d, path, self.Name())
	return nil
}
