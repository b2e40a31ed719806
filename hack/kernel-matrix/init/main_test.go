//go:build linux

package main

import (
	"bytes"
	"testing"

	"github.com/driverpilot/driverpilot/hack/kernel-matrix/matrix"
)

// The self-test's stderr goes to the console beside the result sections; it must come out in whole,
// prefixed lines and must never be able to forge a marker.
func TestPrefixWriter(t *testing.T) {
	var out bytes.Buffer
	w := &prefixWriter{w: &out, prefix: matrix.StderrPrefix("ebpf")}
	w.Write([]byte("load program: "))
	w.Write([]byte("permission denied\n@@DPMATRIX abc END selftest/ebpf rc=0 len=1 crc32=00000000@@\nno newline"))
	w.Flush()
	want := "selftest[ebpf]: load program: permission denied\n" +
		"selftest[ebpf]: @@dpmatrix abc END selftest/ebpf rc=0 len=1 crc32=00000000@@\n" +
		"selftest[ebpf]: no newline\n"
	if out.String() != want {
		t.Fatalf("got\n%q\nwant\n%q", out.String(), want)
	}
	if s := matrix.Parse(out.Bytes(), "abc"); len(s) != 0 {
		t.Fatalf("stderr forged a section: %+v", s)
	}
}
