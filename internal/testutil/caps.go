package testutil

import (
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// CapabilityCommand returns a command that runs name with args as root holding exactly caps
// (spelt as Kubernetes does: "SYS_ADMIN"), the way a container runtime starts a container that
// drops ALL and adds caps: caps are the bounding, permitted and effective sets, nothing is
// inheritable or ambient. It uses setpriv (util-linux) and skips without it. Before returning it
// proves the harness: a process started the same way must report exactly caps in
// /proc/self/status, which fails where this process's own bounding set lacks one of them (as a
// container adding it would fail to start).
func CapabilityCommand[S ~string](t testing.TB, caps []S, name string, args ...string) *exec.Cmd {
	t.Helper()
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skipf("needs setpriv (util-linux) to run a process with a given capability set: %v", err)
	}
	out, err := exec.Command(setpriv, "--list-caps").Output()
	if err != nil {
		t.Fatalf("setpriv --list-caps: %v", err)
	}
	known := strings.Fields(string(out)) // in capability number order
	bounding, want := "-all", uint64(0)
	for _, c := range caps {
		lower := strings.ToLower(string(c))
		i := slices.Index(known, lower)
		if i < 0 {
			t.Fatalf("setpriv does not know capability %s (known: %v)", c, known)
		}
		bounding += ",+" + lower
		want |= 1 << i
	}
	command := func(name string, args ...string) *exec.Cmd {
		return exec.Command(setpriv, append([]string{"--bounding-set", bounding, "--inh-caps", "-all", "--ambient-caps", "-all", "--", name}, args...)...)
	}
	status, err := command("/bin/cat", "/proc/self/status").Output()
	if err != nil {
		t.Fatalf("run /bin/cat under %v: %v", caps, err)
	}
	if err := checkCapabilities(string(status), want, known); err != nil {
		t.Fatalf("under %v: %v", caps, err)
	}
	return command(name, args...)
}

// checkCapabilities compares the capability sets of a /proc/PID/status with want.
func checkCapabilities(status string, want uint64, known []string) error {
	for _, line := range strings.Split(status, "\n") {
		set, hex, ok := strings.Cut(line, ":\t")
		if !ok || !slices.Contains([]string{"CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"}, set) {
			continue
		}
		got, err := strconv.ParseUint(hex, 16, 64)
		if err != nil {
			return fmt.Errorf("%s: %w", line, err)
		}
		expect := want
		if set == "CapInh" || set == "CapAmb" {
			expect = 0
		}
		if got != expect {
			var missing []string
			for i, c := range known {
				if expect&^got&(1<<i) != 0 {
					missing = append(missing, strings.ToUpper(c))
				}
			}
			return fmt.Errorf("%s = %016x, want %016x; missing %v: where the bounding set of the process that starts "+
				"containers lacks a capability, a container that adds it does not start", set, got, expect, missing)
		}
	}
	return nil
}
