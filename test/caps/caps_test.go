// Package caps runs the real agent functions on this kernel as a process holding exactly the
// capabilities the agent DaemonSet grants (controllers.AgentCapabilities), the way a container
// runtime starts the agent container (testutil.CapabilityCommand). The probe must measure what it
// measures with every capability, and the self-test must pass with both built-in drivers and all
// four checks; with any one of the capabilities left out the self-test must not pass, so the list
// stays minimal.
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
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/controllers"
	"github.com/driverpilot/driverpilot/internal/testutil"
)

// driverpilot builds the binary once per test.
func driverpilot(t *testing.T) string {
	t.Helper()
	testutil.RequireKernel(t)
	return testutil.BuildPackage(t, "./cmd/driverpilot")
}

// selftest runs `driverpilot selftest` under caps and returns its verdict and, for messages, its
// output.
func selftest(t *testing.T, bin string, caps []corev1.Capability, driver v1alpha1.Driver, workdir string) (v1alpha1.SelfTestStatus, string) {
	t.Helper()
	cmd := testutil.CapabilityCommand(t, caps, bin, "selftest", "--driver", string(driver), "--workdir", workdir, "-o", "json")
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
func probe(t *testing.T, cmd *exec.Cmd) v1alpha1.ProbeFacts {
	t.Helper()
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
	bin := driverpilot(t)
	caps := controllers.AgentCapabilityNames()
	full := probe(t, exec.Command(bin, "probe", "-o", "json"))
	if got := probe(t, testutil.CapabilityCommand(t, caps, bin, "probe", "-o", "json")); !reflect.DeepEqual(full, got) {
		a, _ := json.MarshalIndent(full, "", "  ")
		b, _ := json.MarshalIndent(got, "", "  ")
		t.Errorf("the probe under %v differs from the probe with every capability:\nall:\n%s\nshipped:\n%s", caps, a, b)
	}
	workdirs := map[string]string{"host": t.TempDir(), "overlay": overlayWorkdir(t)}
	for _, driver := range []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF} {
		for where, dir := range workdirs {
			t.Run(string(driver)+"/"+where, func(t *testing.T) {
				st, out := selftest(t, bin, caps, driver, dir)
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
	bin := driverpilot(t)
	caps := controllers.AgentCapabilityNames()
	for _, drop := range caps {
		t.Run(string(drop), func(t *testing.T) {
			fewer := slices.DeleteFunc(slices.Clone(caps), func(c corev1.Capability) bool { return c == drop })
			st, out := selftest(t, bin, fewer, v1alpha1.DriverModernEBPF, t.TempDir())
			if st.Result == v1alpha1.SelfTestPassed {
				t.Fatalf("the self-test passes without %s (under %v), so the agent does not need it: %s", drop, fewer, out)
			}
			t.Logf("without %s: %s", drop, out)
		})
	}
}
