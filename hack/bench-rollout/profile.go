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

// profileAPIServer records the API server's CPU profile (its /debug/pprof endpoint, on by
// default) for the given time into dir/apiserver.pprof, so a run can show where the server
// spends the cores the rollout is bound by. It runs in the background; wait on the channel.
func profileAPIServer(ctx context.Context, cfg *rest.Config, dir string, d time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			body, err := cs.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/profile").
				Param("seconds", strconv.Itoa(int(d.Seconds()))).Timeout(d + 30*time.Second).DoRaw(ctx)
			if err != nil {
				return fmt.Errorf("API server CPU profile: %w", err)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			path := filepath.Join(dir, "apiserver.pprof")
			if err := os.WriteFile(path, body, 0o644); err != nil {
				return err
			}
			logf("API server CPU profile (%s of the rollout): %s", d, path)
			return nil
		}()
	}()
	return done
}

// profileSelf records this process's own CPU profile (the simulated agents and the observer)
// over the same window into dir/bench.pprof; the returned function stops it.
func profileSelf(dir string) (stop func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, "bench.pprof"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); _ = f.Close() }, nil
}
