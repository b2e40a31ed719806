package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// managerProc is the driverpilot manager running as a child process.
type managerProc struct {
	cmd         *exec.Cmd
	logPath     string
	metricsAddr string
	done        chan struct{}
	mem         *memSampler
	stopOnce    sync.Once
}

func startManager(ctx context.Context, bin, kubeconfig, tmp, extra string) (*managerProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	m := &managerProc{logPath: filepath.Join(tmp, "manager.log"), metricsAddr: fmt.Sprintf("127.0.0.1:%d", port), done: make(chan struct{})}
	logFile, err := os.Create(m.logPath)
	if err != nil {
		return nil, err
	}
	args := []string{"manager",
		"--metrics-bind-address=" + m.metricsAddr, "--metrics-secure=false", // plain HTTP on loopback for the benchmark
		"--health-probe-bind-address=0",
		"--namespace=" + namespace,
		"--leader-elect=false",
	}
	args = append(args, strings.Fields(extra)...)
	m.cmd = exec.Command(bin, args...)
	m.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	m.cmd.Stdout, m.cmd.Stderr = logFile, logFile
	// Its own process group, and killed if this process dies first.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start manager: %w", err)
	}
	go func() {
		_ = m.cmd.Wait()
		logFile.Close()
		close(m.done)
	}()
	m.mem = newMemSampler(m.cmd.Process.Pid, 100*time.Millisecond, m.done)
	return m, nil
}

// waitStarted waits until controller-runtime logged that the reconciler's workers started
// (its caches are synced), so the clock starts with a ready manager.
func (m *managerProc) waitStarted(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(m.logPath)
		if bytes.Contains(b, []byte("Starting workers")) {
			return nil
		}
		select {
		case <-m.done:
			return fmt.Errorf("manager exited early:\n%s", tail(b, 2000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	b, _ := os.ReadFile(m.logPath)
	return fmt.Errorf("manager workers did not start within %s:\n%s", limit, tail(b, 2000))
}

func (m *managerProc) stop() {
	m.stopOnce.Do(func() {
		select {
		case <-m.done:
			return
		default:
		}
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
			<-m.done
		}
	})
}

// cpuSeconds is the manager's user+system CPU time so far.
func (m *managerProc) cpuSeconds() float64 { return procCPUSeconds(m.cmd.Process.Pid) }

// scrapeMetrics returns the manager's metrics that explain where its time went.
func (m *managerProc) scrapeMetrics() []string {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + m.metricsAddr + "/metrics")
	if err != nil {
		return []string{"(metrics unavailable: " + err.Error() + ")"}
	}
	defer resp.Body.Close()
	keep := []string{
		"controller_runtime_reconcile_total{",
		"controller_runtime_reconcile_errors_total{",
		"controller_runtime_reconcile_time_seconds_sum",
		"controller_runtime_reconcile_time_seconds_count",
		"controller_runtime_max_concurrent_reconciles",
		"rest_client_requests_total",
		"rest_client_rate_limiter_duration_seconds_sum",
		"rest_client_rate_limiter_duration_seconds_count",
		"workqueue_adds_total{",
		"workqueue_retries_total{",
		"process_cpu_seconds_total",
	}
	var out []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "#") {
			continue
		}
		for _, k := range keep {
			if strings.HasPrefix(l, k) {
				if strings.HasSuffix(l, " 0") {
					break
				}
				out = append(out, l)
				break
			}
		}
	}
	return out
}

type logSummary struct {
	throttling      int
	throttlingLines []string
	errors          int
	errorLines      []string
	conflicts       int
}

func (m *managerProc) logSummary() logSummary {
	var s logSummary
	f, err := os.Open(m.logPath)
	if err != nil {
		return s
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := r.ReadString('\n')
		l := strings.TrimSpace(line)
		if l != "" {
			low := strings.ToLower(l)
			if strings.Contains(low, "client-side throttling") {
				s.throttling++
				if len(s.throttlingLines) < 3 {
					s.throttlingLines = append(s.throttlingLines, clip(l, 300))
				}
			}
			if strings.Contains(low, "the object has been modified") || strings.Contains(low, "conflict") {
				s.conflicts++
			}
			if strings.Contains(l, `"level":"error"`) || strings.HasPrefix(l, "E") && len(l) > 5 && l[1] >= '0' && l[1] <= '9' {
				s.errors++
				if len(s.errorLines) < 3 {
					s.errorLines = append(s.errorLines, clip(l, 300))
				}
			}
		}
		if err != nil {
			if err != io.EOF {
				return s
			}
			break
		}
	}
	return s
}

// memSampler samples VmHWM and VmRSS of a process.
type memSampler struct {
	pid      int
	hwm, rss atomic.Int64 // bytes
	samples  atomic.Int64
}

func newMemSampler(pid int, every time.Duration, done <-chan struct{}) *memSampler {
	s := &memSampler{pid: pid}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *memSampler) sample() {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid))
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmHWM:":
			if kb*1024 > s.hwm.Load() {
				s.hwm.Store(kb * 1024)
			}
		case "VmRSS:":
			if kb*1024 > s.rss.Load() {
				s.rss.Store(kb * 1024)
			}
		}
	}
	s.samples.Add(1)
}

// final takes a last sample (VmHWM is the kernel's own high-water mark, so this is exact).
func (s *memSampler) final() int64 {
	s.sample()
	return s.hwm.Load()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
