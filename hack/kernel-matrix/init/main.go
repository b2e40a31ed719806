//go:build linux

// Command init is PID 1 of the kernel-matrix guest. It mounts the pseudo filesystems, loads the
// kernel modules the host put in the initramfs (overlay, on Debian's 6.1), runs
// `driverpilot selftest` once per driver, prints every result between the markers of package
// matrix on the serial console, and powers the machine off.
//
// It reads its parameters from the kernel command line:
//
//	dpmatrix.nonce=<hex>             marker nonce (required)
//	dpmatrix.drivers=modern_ebpf,ebpf
//	dpmatrix.checks=ExeUpperLayer,...
//	dpmatrix.timeout=300s            per self-test run
//
// Build it static: CGO_ENABLED=0 go build -o init ./hack/kernel-matrix/init
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/hack/kernel-matrix/matrix"
)

const (
	driverpilotBin = "/bin/driverpilot"
	// moduleOrder lists the module files to load, one path a line, dependencies first.
	moduleOrder = "/lib/modules/load-order"
)

func main() {
	defer powerOff()
	console := openConsole()
	logf := func(format string, args ...any) { fmt.Fprintf(console, "dpmatrix-init: "+format+"\n", args...) }

	info := matrix.GuestInfo{UptimeAtInit: uptime()}
	info.Problems = append(info.Problems, mountAll(logf)...)
	params := cmdline()
	nonce := params["dpmatrix.nonce"]
	if nonce == "" {
		logf("no dpmatrix.nonce on the kernel command line; nothing to do")
		return
	}
	drivers := splitList(params["dpmatrix.drivers"], "modern_ebpf,ebpf")
	checks := params["dpmatrix.checks"]
	timeout, err := time.ParseDuration(params["dpmatrix.timeout"])
	if err != nil || timeout <= 0 {
		timeout = 300 * time.Second
	}

	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		info.KernelRelease = unix.ByteSliceToString(uts.Release[:])
		info.KernelVersion = unix.ByteSliceToString(uts.Version[:])
	}
	info.Modules = loadModules(logf)
	info.VmlinuxBTF = exists("/sys/kernel/btf/vmlinux")
	info.OverlayModuleBTF = exists("/sys/kernel/btf/overlay")
	if b, err := os.ReadFile("/sys/kernel/security/lockdown"); err == nil {
		info.Lockdown = strings.TrimSpace(string(b))
	} else {
		info.Lockdown = "unknown: " + err.Error()
	}
	writeJSON(console, nonce, matrix.SectionInfo, 0, info, logf)

	var sum matrix.Summary
	for _, d := range drivers {
		run, stdout := selftest(console, d, checks, timeout, logf)
		sum.Runs = append(sum.Runs, run)
		if err := matrix.WriteSection(console, nonce, matrix.SelftestSection(d), run.RC, stdout); err != nil {
			logf("print %s result: %v", d, err)
		}
	}
	if failed(sum) {
		dumpKernelLog(console)
	}
	sum.UptimeAtEnd = uptime()
	writeJSON(console, nonce, matrix.SectionDone, 0, sum, logf)
}

// selftest runs one driver's self-test; its stderr goes to the console line by line as it comes.
func selftest(console *os.File, driver, checks string, timeout time.Duration, logf func(string, ...any)) (matrix.Run, []byte) {
	workdir := filepath.Join("/work", driver)
	run := matrix.Run{Driver: driver, RC: -1}
	if err := os.MkdirAll(workdir, 0o755); err != nil {
		run.Error = err.Error()
		return run, nil
	}
	args := []string{"selftest", "--driver", driver, "-o", "json", "--workdir", workdir}
	if checks != "" {
		args = append(args, "--checks", checks)
	}
	logf("running %s %s", driverpilotBin, strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, driverpilotBin, args...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &prefixWriter{w: console, prefix: matrix.StderrPrefix(driver)}
	start := time.Now()
	err := cmd.Run()
	cmd.Stderr.(*prefixWriter).Flush()
	run.Seconds = time.Since(start).Seconds()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		run.Error = fmt.Sprintf("killed after %s", timeout)
	case errors.As(err, &exit):
		run.RC = exit.ExitCode()
	case err != nil:
		run.Error = err.Error()
	default:
		run.RC = 0
	}
	logf("%s self-test finished: rc=%d %.1fs %s", driver, run.RC, run.Seconds, run.Error)
	return run, stdout.Bytes()
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

func failed(sum matrix.Summary) bool {
	for _, r := range sum.Runs {
		if r.RC != 0 {
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
