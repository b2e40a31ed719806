// Package testutil holds the checks that let kernel tests skip honestly where they cannot run.
// CI runs as root on a BPF-capable kernel and turns every skip into a failure.
package testutil

import (
	"os"
	"testing"
)

// RequireKernel skips unless the test can load BPF programs and mount overlayfs here: it needs
// root and the kernel's BTF.
func RequireKernel(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF programs and mount overlayfs")
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skipf("needs kernel BTF: %v", err)
	}
}
