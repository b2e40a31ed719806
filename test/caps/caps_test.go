// Package caps runs the real agent functions on this kernel as a process holding exactly the
// capabilities the agent DaemonSet grants (controllers.AgentCapabilities), the way a container
// runtime starts the agent container: root, a capability bounding set of exactly that list, and
// nothing inheritable or ambient. The probe must measure what it measures with every capability,
// and the self-test must pass with both built-in drivers and all four checks; with any one of the
// capabilities left out the self-test must not pass, so the list stays minimal.
package caps

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
	"github.com/driverpilot/driverpilot/internal/testutil"
)

// harness runs driverpilot under a capability set with setpriv (util-linux).
type harness struct {
	setpriv, bin string
	known        []string // setpriv's capability names, in capability number order
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	testutil.RequireKernel(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skipf("needs setpriv (util-linux) to run a process with a given capability bounding set: %v", err)
	}
	out, err := exec.Command(setpriv, "--list-caps").Output()
	if err != nil {
		t.Fatalf("setpriv --list-caps: %v", err)
	}
	return &harness{setpriv: setpriv, bin: testutil.BuildPackage(t, "./cmd/driverpilot"), known: strings.Fields(string(out))}
}

// shipped is the agent's capability list as setpriv spells it.
func shipped() []string {
	var caps []string
	for _, c := range controllers.AgentCapabilities {
		caps = append(caps, strings.ToLower(string(c.Name)))
	}
	return caps
}

// command is driverpilot args run as root with exactly caps as bounding, permitted and effective
// set (root gains its bounding set at exec) and nothing inheritable or ambient.
func (h *harness) command(caps []string, args ...string) *exec.Cmd {
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + c
	}
	return exec.Command(h.setpriv, append([]string{"--bounding-set", bounding, "--inh-caps", "-all", "--ambient-caps", "-all", "--", h.bin}, args...)...)
}

// checkHarness proves the harness gives the process exactly caps: setpriv would silently leave
// out a name it does not know.
func (h *harness) checkHarness(t *testing.T, caps []string) {
	t.Helper()
	var want uint64
	for _, c := range caps {
		i := slices.Index(h.known, c)
		if i < 0 {
			t.Fatalf("setpriv does not know capability %q (known: %v)", c, h.known)
		}
		want |= 1 << i
	}
	cmd := h.command(caps)
	cmd.Args = append(cmd.Args[:len(cmd.Args)-1], "/bin/cat", "/proc/self/status")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, hex, ok := strings.Cut(line, ":\t")
		if !ok || !slices.Contains([]string{"CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"}, name) {
			continue
		}
		got, err := strconv.ParseUint(hex, 16, 64)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		expect := want
		if name == "CapInh" || name == "CapAmb" {
			expect = 0
		}
		if got != expect {
			var missing []string
			for i, c := range h.known {
				if expect&^got&(1<<i) != 0 {
					missing = append(missing, c)
				}
			}
			t.Fatalf("%s = %016x under %v, want %016x; missing %v: where the bounding set of the process that starts "+
				"containers lacks a capability, a container that adds it does not start", name, got, caps, expect, missing)
		}
	}
}

// selftest runs `driverpilot selftest` and returns its verdict and the output for messages.
func (h *harness) selftest(t *testing.T, caps []string, driver v1alpha1.Driver, workdir string) (v1alpha1.SelfTestStatus, string) {
	t.Helper()
	cmd := h.command(caps, "selftest", "--driver", string(driver), "--workdir", workdir, "-o", "json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, _ := cmd.Output() // exit 1 on a failed self-test; the verdict says why
	var st v1alpha1.SelfTestStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("%v: no verdict (%v)\nstdout: %s\nstderr: %s", cmd.Args, err, out, stderr.Bytes())
	}
	return st, fmt.Sprintf("%s: %s\n%s", st.Result, st.Message, stderr.Bytes())
}

// probe runs `driverpilot probe` and returns its facts without the time they were taken.
func (h *harness) probe(t *testing.T, caps []string, all bool) v1alpha1.ProbeFacts {
	t.Helper()
	var cmd *exec.Cmd
	if all {
		cmd = exec.Command(h.bin, "probe", "-o", "json")
	} else {
		cmd = h.command(caps, "probe", "-o", "json")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, stderr.Bytes())
	}
	var res struct {
		Probe v1alpha1.ProbeFacts `json:"probe"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
	res.Probe.ProbeTime = nil
	return res.Probe
}

// overlayWorkdir is a directory on an overlayfs mount, as /tmp is in a container: the self-test
// then stages its layers on a private tmpfs, which is what it does in the agent pod.
func overlayWorkdir(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	for _, d := range []string{"l", "u", "w", "m"} {
		if err := os.Mkdir(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	merged := filepath.Join(base, "m")
	opts := fmt.Sprintf("lowerdir=%s/l,upperdir=%s/u,workdir=%s/w", base, base, base)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount the container-like overlay: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(merged, 0); err != nil {
			t.Errorf("unmount %s: %v", merged, err)
		}
	})
	return merged
}

// TestShippedCapabilitiesSuffice: under exactly the shipped set the probe sees what it sees with
// every capability (the BPF load probes, securityfs for lockdown, BPF memory accounting), and the
// self-test passes all four checks with both drivers, with its layers on the host filesystem and
// on a private tmpfs over overlayfs (the agent pod's case).
func TestShippedCapabilitiesSuffice(t *testing.T) {
	h := newHarness(t)
	caps := shipped()
	h.checkHarness(t, caps)

	if full, got := h.probe(t, nil, true), h.probe(t, caps, false); !reflect.DeepEqual(full, got) {
		a, _ := json.MarshalIndent(full, "", "  ")
		b, _ := json.MarshalIndent(got, "", "  ")
		t.Errorf("the probe under %v differs from the probe with every capability:\nall:\n%s\nshipped:\n%s", caps, a, b)
	}
	workdirs := map[string]string{"host": t.TempDir(), "overlay": overlayWorkdir(t)}
	for _, driver := range []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF} {
		for where, dir := range workdirs {
			t.Run(string(driver)+"/"+where, func(t *testing.T) {
				st, out := h.selftest(t, caps, driver, dir)
				if st.Result != v1alpha1.SelfTestPassed || len(st.Checks) != len(v1alpha1.AllChecks) {
					t.Fatalf("self-test under %v: %d checks, %s", caps, len(st.Checks), out)
				}
			})
		}
	}
}

// TestEachShippedCapabilityIsNeeded: with any one capability of the shipped set left out the
// self-test does not pass, so none of them is there for nothing.
func TestEachShippedCapabilityIsNeeded(t *testing.T) {
	h := newHarness(t)
	caps := shipped()
	for _, drop := range caps {
		t.Run(drop, func(t *testing.T) {
			fewer := slices.DeleteFunc(slices.Clone(caps), func(c string) bool { return c == drop })
			h.checkHarness(t, fewer)
			st, out := h.selftest(t, fewer, v1alpha1.DriverModernEBPF, t.TempDir())
			if st.Result == v1alpha1.SelfTestPassed {
				t.Fatalf("the self-test passes without %s (under %v), so the agent does not need it: %s", drop, fewer, out)
			}
			t.Logf("without %s: %s", drop, out)
		})
	}
}
