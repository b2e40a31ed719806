package probe

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
)

// Abilities measures what the kernel can do with eBPF by doing it.
type Abilities interface {
	Probe(ctx context.Context) v1alpha1.EBPFFacts
}

// AbilitiesFunc adapts a function to Abilities (tests use it to inject recorded answers).
type AbilitiesFunc func(ctx context.Context) v1alpha1.EBPFFacts

// Probe calls f.
func (f AbilitiesFunc) Probe(ctx context.Context) v1alpha1.EBPFFacts { return f(ctx) }

// Inputs are facts the probe cannot read from the node's files: the agent passes them in from
// the Node object (the probe itself never talks to the API server).
type Inputs struct {
	// ProviderID is node.spec.providerID (aws:///us-east-1a/i-0abc...).
	ProviderID string
	// Labels are the node's labels.
	Labels map[string]string
}

// Prober collects ProbeFacts below Root.
type Prober struct {
	// Root is the directory the host's / is visible at.
	Root string
	// Abilities measures eBPF abilities; nil leaves them Unknown with AbilitiesUnavailable as
	// the error.
	Abilities Abilities
	// AbilitiesUnavailable explains why Abilities is nil.
	AbilitiesUnavailable string
	// Live says Root describes the running kernel, so uname(2) may stand in for a missing file.
	Live bool
	// Now stamps probeTime; nil means time.Now.
	Now func() time.Time
}

// New returns a Prober for root. When root describes the running kernel (it is "/" or its boot
// ID is the running kernel's), the live eBPF abilities prober is used; otherwise the abilities
// stay Unknown, since loading programs would measure another kernel than the one described.
func New(root string) *Prober {
	p := &Prober{Root: root}
	live, why := DescribesRunningKernel(root)
	if live {
		p.Live, p.Abilities = true, LiveAbilities{}
	} else {
		p.AbilitiesUnavailable = "eBPF abilities not probed: " + why
	}
	return p
}

// DescribesRunningKernel reports whether root shows the running kernel's /proc, by comparing boot
// IDs; the string says why not.
func DescribesRunningKernel(root string) (bool, string) {
	if filepath.Clean(root) == "/" {
		return true, ""
	}
	ours, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return false, fmt.Sprintf("read own boot ID: %v", err)
	}
	theirs, err := os.ReadFile(filepath.Join(root, "proc/sys/kernel/random/boot_id"))
	if err != nil {
		return false, fmt.Sprintf("root %s: read boot ID: %v", root, err)
	}
	if strings.TrimSpace(string(ours)) != strings.TrimSpace(string(theirs)) {
		return false, fmt.Sprintf("root %s has another boot ID than the running kernel", root)
	}
	return true, ""
}

// Probe collects the facts. It never fails as a whole: each fact carries its own error.
func (p *Prober) Probe(ctx context.Context, in Inputs) v1alpha1.ProbeFacts {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	var f v1alpha1.ProbeFacts
	f.Kernel = p.kernel()
	f.BTF = p.btf()
	if p.Abilities != nil {
		f.EBPF = p.Abilities.Probe(ctx)
	} else {
		why := p.AbilitiesUnavailable
		if why == "" {
			why = "no eBPF abilities prober configured"
		}
		u := v1alpha1.BoolFact{Answer: v1alpha1.AnswerUnknown, Error: why}
		f.EBPF = v1alpha1.EBPFFacts{TPBTF: u, RawTracepoint: u, RingBuffer: u, Memlock: &v1alpha1.StringFact{Error: why}}
	}
	f.Lockdown = p.lockdown()
	f.Modules = p.modules()
	f.SecureBoot = p.secureBoot()
	f.Overlayfs = p.overlayfs()
	f.Distro = p.distro()
	f.Cloud = p.cloud(in)
	bs := p.boundingSet()
	f.BoundingSet = &bs
	t := metav1.NewTime(now())
	f.ProbeTime = &t
	return f
}

// path joins a host path below the root.
func (p *Prober) path(hostPath string) string { return filepath.Join(p.Root, hostPath) }

// readFile reads a host file below the root. An absolute symlink is resolved below the root too
// (a host's /etc/os-release -> /usr/lib/os-release must not be read from the pod's /usr).
func (p *Prober) readFile(hostPath string) ([]byte, string, error) {
	full := p.path(hostPath)
	for range 8 {
		target, err := os.Readlink(full)
		if err != nil {
			break // not a symlink (or unreadable: ReadFile below reports it)
		}
		if filepath.IsAbs(target) {
			full = p.path(target)
		} else {
			full = filepath.Join(filepath.Dir(full), target)
		}
	}
	data, err := os.ReadFile(full)
	return data, full, err
}

func (p *Prober) readTrimmed(hostPath string) (string, string, error) {
	data, full, err := p.readFile(hostPath)
	return strings.TrimSpace(string(data)), full, err
}

func stringFact(value, source string) v1alpha1.StringFact {
	return v1alpha1.StringFact{Value: value, Source: source}
}

func stringErr(err error) v1alpha1.StringFact { return v1alpha1.StringFact{Error: err.Error()} }

func boolFact(yes bool, source string) v1alpha1.BoolFact {
	a := v1alpha1.AnswerNo
	if yes {
		a = v1alpha1.AnswerYes
	}
	return v1alpha1.BoolFact{Answer: a, Source: source}
}

func boolUnknown(err error) v1alpha1.BoolFact {
	return v1alpha1.BoolFact{Answer: v1alpha1.AnswerUnknown, Error: err.Error()}
}

// dirExists says whether a host directory is present below the root (a mounted /proc, /sys).
func (p *Prober) dirExists(hostPath string) bool {
	st, err := os.Stat(p.path(hostPath))
	return err == nil && st.IsDir()
}

func (p *Prober) kernel() v1alpha1.KernelFacts {
	var k v1alpha1.KernelFacts
	if rel, src, err := p.readTrimmed("/proc/sys/kernel/osrelease"); err == nil && rel != "" {
		k.Release = stringFact(rel, src)
	} else if p.Live {
		if u, uerr := uname(); uerr == nil {
			k.Release = stringFact(u.release, "uname(2)")
		} else {
			k.Release = stringErr(fmt.Errorf("read kernel release: %w", errors.Join(err, uerr)))
		}
	} else {
		k.Release = stringErr(fmt.Errorf("read kernel release: %w", orEmpty(err, src)))
	}
	if k.Release.Known() {
		if v, err := kernelversion.ParseRelease(k.Release.Value); err == nil {
			k.Version = stringFact(v.String(), "parsed from the kernel release")
		} else {
			k.Version = stringErr(err)
		}
	} else {
		k.Version = v1alpha1.StringFact{Error: "kernel release unknown"}
	}
	k.Architecture = p.architecture()
	if id, src, err := p.readTrimmed("/proc/sys/kernel/random/boot_id"); err == nil && id != "" {
		k.BootID = stringFact(id, src)
	} else {
		k.BootID = stringErr(fmt.Errorf("read boot ID: %w", orEmpty(err, src)))
	}
	return k
}

// orEmpty turns a nil error from an empty read into a descriptive one.
func orEmpty(err error, path string) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("%s is empty", path)
}

func (p *Prober) architecture() v1alpha1.StringFact {
	machine, src, err := p.readTrimmed("/proc/sys/kernel/arch")
	if err != nil || machine == "" {
		if !p.Live {
			return stringErr(fmt.Errorf("read architecture: %w", orEmpty(err, src)))
		}
		u, uerr := uname()
		if uerr != nil {
			return stringErr(fmt.Errorf("read architecture: %w", errors.Join(err, uerr)))
		}
		machine, src = u.machine, "uname(2)"
	}
	arch, ok := goarch(machine)
	if !ok {
		return stringErr(fmt.Errorf("architecture: unknown machine %q (from %s)", machine, src))
	}
	return stringFact(arch, src+" ("+machine+")")
}

// goarch maps uname's machine to GOARCH spelling.
func goarch(machine string) (string, bool) {
	switch machine {
	case "x86_64", "amd64":
		return "amd64", true
	case "aarch64", "arm64", "aarch64_be":
		return "arm64", true
	case "s390x":
		return "s390x", true
	case "ppc64le":
		return "ppc64le", true
	case "riscv64":
		return "riscv64", true
	case "i386", "i486", "i586", "i686":
		return "386", true
	case "armv7l", "armv6l", "arm":
		return "arm", true
	}
	return "", false
}

func (p *Prober) overlayfs() v1alpha1.BoolFact {
	data, src, err := p.readFile("/proc/filesystems")
	if err != nil {
		return boolUnknown(fmt.Errorf("read filesystems: %w", err))
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 0 && fields[len(fields)-1] == "overlay" {
			return boolFact(true, src)
		}
	}
	return boolFact(false, src+" (overlay neither built in nor loaded)")
}

// boundingSet reads CapBnd of the host's PID 1.
func (p *Prober) boundingSet() v1alpha1.StringFact {
	data, src, err := p.readFile("/proc/1/status")
	if err != nil {
		return v1alpha1.StringFact{Error: fmt.Sprintf("read the host's PID 1 status: %v", err)}
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			v = strings.TrimSpace(v)
			if _, err := strconv.ParseUint(v, 16, 64); err != nil {
				return v1alpha1.StringFact{Error: fmt.Sprintf("%s: CapBnd %q: %v", src, v, err)}
			}
			return v1alpha1.StringFact{Value: v, Source: "CapBnd of " + src}
		}
	}
	return v1alpha1.StringFact{Error: src + " has no CapBnd line"}
}

func (p *Prober) modules() v1alpha1.ModuleFacts {
	var m v1alpha1.ModuleFacts
	_, src, err := p.readFile("/proc/modules")
	switch {
	case err == nil:
		m.Supported = boolFact(true, src)
	case errors.Is(err, fs.ErrNotExist) && p.dirExists("/proc/sys/kernel"):
		m.Supported = boolFact(false, "no "+src+": kernel built without loadable module support")
	default:
		m.Supported = boolUnknown(fmt.Errorf("read modules: %w", err))
	}
	val, src, err := p.readTrimmed("/proc/sys/kernel/modules_disabled")
	switch {
	case err == nil && (val == "0" || val == "1"):
		m.Disabled = boolFact(val == "1", src)
	case err == nil:
		m.Disabled = boolUnknown(fmt.Errorf("%s: unexpected value %q", src, val))
	case errors.Is(err, fs.ErrNotExist) && m.Supported.Answer == v1alpha1.AnswerNo:
		// The switch does not exist without module support; the question does not apply.
		m.Disabled = boolUnknown(fmt.Errorf("no %s: kernel has no module support, so no switch", src))
	default:
		m.Disabled = boolUnknown(fmt.Errorf("read modules_disabled: %w", err))
	}
	return m
}

// secureBootVar is the EFI global variable that holds the Secure Boot state.
const secureBootVar = "SecureBoot-8be4df61-93ca-11d2-aa0d-e98c0330cc8c"

func (p *Prober) secureBoot() v1alpha1.BoolFact {
	if !p.dirExists("/sys/firmware/efi") {
		if !p.dirExists("/sys/firmware") {
			return boolUnknown(fmt.Errorf("no %s: sysfs not visible below the root", p.path("/sys/firmware")))
		}
		return boolFact(false, "no "+p.path("/sys/firmware/efi")+": not booted with UEFI")
	}
	// efivarfs: 4 bytes of attributes, then the value.
	data, src, err := p.readFile("/sys/firmware/efi/efivars/" + secureBootVar)
	offset := 4
	if errors.Is(err, fs.ErrNotExist) {
		// The legacy sysfs interface holds the bare value.
		data, src, err = p.readFile("/sys/firmware/efi/vars/" + secureBootVar + "/data")
		offset = 0
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			entries, derr := os.ReadDir(p.path("/sys/firmware/efi/efivars"))
			if derr == nil && len(entries) > 0 {
				return boolFact(false, "efivars has no SecureBoot variable: firmware without Secure Boot")
			}
			return boolUnknown(fmt.Errorf("read Secure Boot state: efivarfs not mounted at %s", p.path("/sys/firmware/efi/efivars")))
		}
		return boolUnknown(fmt.Errorf("read Secure Boot state: %w", err))
	}
	if len(data) <= offset {
		return boolUnknown(fmt.Errorf("%s: %d bytes, too short", src, len(data)))
	}
	switch data[offset] {
	case 0:
		return boolFact(false, src)
	case 1:
		return boolFact(true, src)
	}
	return boolUnknown(fmt.Errorf("%s: unexpected value %d", src, data[offset]))
}
