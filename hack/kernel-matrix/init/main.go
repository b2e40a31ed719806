//go:build linux

// Command init is PID 1 of the kernel-matrix guest. It mounts the pseudo filesystems, loads the
// kernel modules the host put in the initramfs (overlay and its dependencies), prints what
// `driverpilot probe` finds and decides on this kernel, runs `driverpilot selftest` once per
// driver, then once per injected sensor fault (each must fail), prints every result between the
// markers of package matrix on the serial console, and powers the machine off.
//
// As PID 1 it reads its parameters from the kernel command line:
//
//	dpmatrix.nonce=<hex>             marker nonce (required)
//	dpmatrix.drivers=modern_ebpf,ebpf
//	dpmatrix.checks=ExeUpperLayer,...
//	dpmatrix.timeout=300s            per self-test run
//	dpmatrix.faults=all-lower,drop-events   faults to inject (agent/selftest.Fault), default none
//	dpmatrix.faultdrivers=modern_ebpf       drivers the faults run with (default: the first driver)
//
// Run by anyone else (not PID 1) it is the matrix's host cell: the same sections for the running
// kernel, printed to stdout, parameters as flags (-nonce, -drivers, -checks, -timeout, -faults,
// -fault-drivers, -driverpilot, -workdir); it mounts nothing, loads no module and powers nothing off.
//
// Build it static: CGO_ENABLED=0 go build -o init ./hack/kernel-matrix/init
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/hack/kernel-matrix/matrix"
)

const (
	guestDriverpilot = "/bin/driverpilot"
	// moduleOrder lists the module files to load, one path a line, dependencies first.
	moduleOrder = "/lib/modules/load-order"
	// faultEnv is agent/selftest.FaultEnv (not imported: it would link the sensor into /init).
	faultEnv = "DRIVERPILOT_SELFTEST_FAULT"
	// dropTimeout is the per-check timeout of a drop-events run: no event can come, so waiting
	// longer proves nothing more.
	dropTimeout = "2s"
)

// params are one matrix run's parameters.
type params struct {
	nonce, checks     string
	drivers           []string
	faults            []string
	faultDrivers      []string
	timeout           time.Duration
	driverpilot, work string
	host              bool
}

func main() {
	if os.Getpid() != 1 {
		os.Exit(hostMain(os.Args[1:]))
	}
	defer powerOff()
	console := openConsole()
	logf := func(format string, args ...any) { fmt.Fprintf(console, "dpmatrix-init: "+format+"\n", args...) }

	info := matrix.GuestInfo{UptimeAtInit: uptime()}
	info.Problems = append(info.Problems, mountAll(logf)...)
	kv := cmdline()
	p := params{
		nonce:        kv["dpmatrix.nonce"],
		drivers:      splitList(kv["dpmatrix.drivers"], "modern_ebpf,ebpf"),
		checks:       kv["dpmatrix.checks"],
		faults:       splitList(kv["dpmatrix.faults"], ""),
		faultDrivers: splitList(kv["dpmatrix.faultdrivers"], ""),
		driverpilot:  guestDriverpilot,
		work:         "/work",
	}
	if p.nonce == "" {
		logf("no dpmatrix.nonce on the kernel command line; nothing to do")
		return
	}
	timeout, err := time.ParseDuration(kv["dpmatrix.timeout"])
	if err != nil || timeout <= 0 {
		timeout = 300 * time.Second
	}
	p.timeout = timeout
	info.Modules = loadModules(logf)
	run(console, p, info, logf)
}

// hostMain runs the matrix on the running kernel (the host cell) and returns the exit code.
func hostMain(args []string) int {
	fs := flag.NewFlagSet("kernel-matrix-init", flag.ContinueOnError)
	nonce := fs.String("nonce", "", "marker nonce (required)")
	drivers := fs.String("drivers", "modern_ebpf,ebpf", "drivers, comma-separated")
	checks := fs.String("checks", "", "checks, comma-separated (default all)")
	timeout := fs.Duration("timeout", 300*time.Second, "per self-test run")
	faults := fs.String("faults", "", "sensor faults to inject, comma-separated")
	faultDrivers := fs.String("fault-drivers", "", "drivers the faults run with (default: the first driver)")
	bin := fs.String("driverpilot", "driverpilot", "the driverpilot binary")
	work := fs.String("workdir", os.TempDir(), "directory the self-tests stage their overlay in")
	if err := fs.Parse(args); err != nil || *nonce == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: init -nonce HEX [flags]  (not PID 1: runs the matrix on this kernel)")
		return 2
	}
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "dpmatrix-host: "+format+"\n", args...) }
	p := params{
		nonce: *nonce, checks: *checks, timeout: *timeout, driverpilot: *bin, work: *work, host: true,
		drivers: splitList(*drivers, ""), faults: splitList(*faults, ""), faultDrivers: splitList(*faultDrivers, ""),
	}
	sum := run(os.Stdout, p, matrix.GuestInfo{UptimeAtInit: uptime()}, logf)
	if failed(sum) {
		return 1
	}
	return 0
}

// run prints the info and probe sections, runs the self-tests and the fault runs, and prints the
// done section.
func run(console *os.File, p params, info matrix.GuestInfo, logf func(string, ...any)) matrix.Summary {
	info.Host = p.host
	info.Architecture = runtime.GOARCH
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		info.KernelRelease = unix.ByteSliceToString(uts.Release[:])
		info.KernelVersion = unix.ByteSliceToString(uts.Version[:])
	}
	info.VmlinuxBTF = exists("/sys/kernel/btf/vmlinux")
	info.OverlayModuleBTF = exists("/sys/kernel/btf/overlay")
	if b, err := os.ReadFile("/sys/kernel/security/lockdown"); err == nil {
		info.Lockdown = strings.TrimSpace(string(b))
	} else {
		info.Lockdown = "unknown: " + err.Error()
	}
	writeJSON(console, p.nonce, matrix.SectionInfo, 0, info, logf)

	probeRC, probeOut := probe(console, p, logf)
	if err := matrix.WriteSection(console, p.nonce, matrix.SectionProbe, probeRC, probeOut); err != nil {
		logf("print probe result: %v", err)
	}

	var sum matrix.Summary
	for _, d := range p.drivers {
		run, stdout := selftest(console, p, d, "", logf)
		sum.Runs = append(sum.Runs, run)
		if err := matrix.WriteSection(console, p.nonce, matrix.SelftestSection(d), run.RC, stdout); err != nil {
			logf("print %s result: %v", d, err)
		}
	}
	faultDrivers := p.faultDrivers
	if len(faultDrivers) == 0 && len(p.drivers) > 0 {
		faultDrivers = p.drivers[:1]
	}
	if len(p.faults) == 0 {
		faultDrivers = nil
	}
	for _, d := range faultDrivers {
		for _, f := range p.faults {
			run, stdout := selftest(console, p, d, f, logf)
			sum.Runs = append(sum.Runs, run)
			if err := matrix.WriteSection(console, p.nonce, matrix.FaultSection(f, d), run.RC, stdout); err != nil {
				logf("print %s/%s result: %v", f, d, err)
			}
		}
	}
	if failed(sum) && !p.host {
		dumpKernelLog(console)
	}
	sum.UptimeAtEnd = uptime()
	writeJSON(console, p.nonce, matrix.SectionDone, 0, sum, logf)
	return sum
}

// probe runs `driverpilot probe -o json`: the facts and the selection engine's decision.
func probe(console *os.File, p params, logf func(string, ...any)) (int, []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// securityfs is mounted already in the guest; on the host the probe mounts it if needed.
	cmd := exec.CommandContext(ctx, p.driverpilot, "probe", "-o", "json")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	pw := &prefixWriter{w: console, prefix: matrix.StderrPrefix("probe")}
	cmd.Stderr = pw
	err := cmd.Run()
	pw.Flush()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return exit.ExitCode(), stdout.Bytes()
	case err != nil:
		logf("probe: %v", err)
		return -1, stdout.Bytes()
	}
	return 0, stdout.Bytes()
}

// selftest runs one driver's self-test, with a sensor fault injected unless fault is ""; its
// stderr goes to the console line by line as it comes.
func selftest(console *os.File, p params, driver, fault string, logf func(string, ...any)) (matrix.Run, []byte) {
	name := driver
	if fault != "" {
		name = fault + "-" + driver
	}
	workdir := filepath.Join(p.work, "dpmatrix-"+name)
	run := matrix.Run{Driver: driver, Fault: fault, RC: -1}
	if err := os.MkdirAll(workdir, 0o755); err != nil {
		run.Error = err.Error()
		return run, nil
	}
	defer os.RemoveAll(workdir)
	args := []string{"selftest", "--driver", driver, "-o", "json", "--workdir", workdir}
	if p.checks != "" {
		args = append(args, "--checks", p.checks)
	}
	if fault == "drop-events" {
		args = append(args, "--timeout", dropTimeout)
	}
	logf("running %s%s %s", prefixIf(fault, faultEnv+"="+fault+" "), p.driverpilot, strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.driverpilot, args...)
	cmd.Env = os.Environ()
	if fault != "" {
		cmd.Env = append(cmd.Env, faultEnv+"="+fault)
	}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	pw := &prefixWriter{w: console, prefix: matrix.StderrPrefix(name)}
	cmd.Stderr = pw
	start := time.Now()
	err := cmd.Run()
	pw.Flush()
	run.Seconds = time.Since(start).Seconds()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		run.Error = fmt.Sprintf("killed after %s", p.timeout)
	case errors.As(err, &exit):
		run.RC = exit.ExitCode()
	case err != nil:
		run.Error = err.Error()
	default:
		run.RC = 0
	}
	logf("%s self-test finished: rc=%d %.1fs %s", name, run.RC, run.Seconds, run.Error)
	return run, stdout.Bytes()
}

// prefixIf returns s when cond is not empty.
func prefixIf(cond, s string) string {
	if cond == "" {
		return ""
	}
	return s
}

// mountAll mounts what the sensor and the self-test need; it returns the failures.
func mountAll(logf func(string, ...any)) []string {
	mounts := []struct {
		fstype, target string
		optional       bool
	}{
		{"proc", "/proc", false},
		{"sysfs", "/sys", false},
		{"devtmpfs", "/dev", false},
		{"tmpfs", "/tmp", false},
		{"tmpfs", "/run", false},
		// The self-test builds its private overlay here: tmpfs supports the trusted xattrs overlay
		// needs for its upper and work directories, the initramfs root may not.
		{"tmpfs", "/work", false},
		{"bpf", "/sys/fs/bpf", false},
		{"tracefs", "/sys/kernel/tracing", false},
		{"debugfs", "/sys/kernel/debug", true},
		{"securityfs", "/sys/kernel/security", true},
	}
	var problems []string
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil && !m.optional {
			problems = append(problems, fmt.Sprintf("mkdir %s: %v", m.target, err))
			continue
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			logf("mount %s on %s: %v", m.fstype, m.target, err)
			if !m.optional {
				problems = append(problems, fmt.Sprintf("mount %s on %s: %v", m.fstype, m.target, err))
			}
		}
	}
	return problems
}

// loadModules loads the modules listed in moduleOrder with finit_module.
func loadModules(logf func(string, ...any)) []matrix.ModuleLoad {
	b, err := os.ReadFile(moduleOrder)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return []matrix.ModuleLoad{{Name: moduleOrder, Error: err.Error()}}
	}
	var out []matrix.ModuleLoad
	for _, path := range strings.Fields(string(b)) {
		name := strings.TrimSuffix(filepath.Base(path), ".ko")
		ml := matrix.ModuleLoad{Name: name}
		if err := finitModule(path); err != nil {
			ml.Error = err.Error()
		}
		logf("load module %s: %s", name, orOK(ml.Error))
		out = append(out, ml)
	}
	return out
}

func finitModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("finit_module %s: %w", path, err)
	}
	return nil
}

func writeJSON(console *os.File, nonce, name string, rc int, v any, logf func(string, ...any)) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err == nil {
		err = matrix.WriteSection(console, nonce, name, rc, b)
	}
	if err != nil {
		logf("print %s: %v", name, err)
	}
}

// openConsole returns the console; the kernel opened it as fd 1 when /dev/console existed.
func openConsole() *os.File {
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		return f
	}
	return os.Stdout
}

// cmdline parses /proc/cmdline into key=value pairs (proc is mounted by then).
func cmdline() map[string]string {
	out := map[string]string{}
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		if k, v, ok := strings.Cut(f, "="); ok {
			out[k] = v
		}
	}
	return out
}

func uptime() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func splitList(s, def string) []string {
	if s == "" {
		s = def
	}
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

func orOK(s string) string {
	if s == "" {
		return "ok"
	}
	return s
}

// powerOff syncs and powers the machine off; qemu runs with -no-reboot, so it exits. PID 1 must never
// return: if power-off fails, the kernel panics, which with panic=-1 also ends qemu.
func powerOff() {
	if r := recover(); r != nil {
		fmt.Fprintf(os.Stderr, "dpmatrix-init: panic: %v\n", r)
	}
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	fmt.Fprintf(os.Stderr, "dpmatrix-init: power off: %v\n", err)
	os.Exit(1)
}

// prefixWriter writes complete lines, each with a prefix; a partial line waits for its newline.
type prefixWriter struct {
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		line := p.buf[:i]
		if bytes.Contains(line, []byte("@@DPMATRIX")) {
			line = bytes.ReplaceAll(line, []byte("@@DPMATRIX"), []byte("@@dpmatrix"))
		}
		if _, err := p.w.Write([]byte(p.prefix + string(line) + "\n")); err != nil {
			return len(b), err
		}
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

// Flush writes a last line that had no newline.
func (p *prefixWriter) Flush() {
	if len(p.buf) > 0 {
		_, _ = p.Write([]byte("\n"))
	}
}

// failed reports whether a run without a fault did not pass (a fault run must fail: the report
// judges those).
func failed(sum matrix.Summary) bool {
	for _, r := range sum.Runs {
		if r.Fault == "" && r.RC != 0 {
			return true
		}
	}
	return false
}

// dumpKernelLog copies the kernel log to the console (outside any section) to debug a failed run:
// the console itself only shows warnings and worse while the guest runs.
func dumpKernelLog(console *os.File) {
	size, err := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil)
	if err != nil || size <= 0 {
		fmt.Fprintf(console, "dpmatrix-init: read kernel log: %v\n", err)
		return
	}
	buf := make([]byte, size)
	n, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	if err != nil {
		fmt.Fprintf(console, "dpmatrix-init: read kernel log: %v\n", err)
		return
	}
	fmt.Fprintln(console, "dpmatrix-init: a self-test failed; the kernel log follows")
	for _, l := range strings.Split(strings.TrimRight(string(buf[:n]), "\n"), "\n") {
		fmt.Fprintf(console, "dmesg: %s\n", l)
	}
}
