package main

import (
	"bytes"
	"debug/elf"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The tiny executable must be a valid ELF that the kernel runs and that exits 0; otherwise the
// benchmark would measure failed execs.
func TestTinyExeRuns(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skipf("the tiny executable is x86-64 only, this is %s", runtime.GOARCH)
	}
	b, err := tinyExe()
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not an ELF file: %v", err)
	}
	if f.Type != elf.ET_EXEC || f.Machine != elf.EM_X86_64 || len(f.Progs) != 1 || f.Progs[0].Type != elf.PT_LOAD {
		t.Fatalf("unexpected ELF: type %v machine %v progs %d", f.Type, f.Machine, len(f.Progs))
	}
	path := filepath.Join(t.TempDir(), "tiny")
	if err := writeTinyExe(path); err != nil {
		t.Fatal(err)
	}
	r, err := execLoop(path, 3)
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	if r.childCPU < 0 || r.elapsed <= 0 {
		t.Fatalf("child CPU time %v, elapsed %v", r.childCPU, r.elapsed)
	}
}

func TestProgIDFromFdinfo(t *testing.T) {
	const fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t26\nprog_jited:\t1\n" +
		"prog_tag:\t8e2bfe3b2d0d5c35\nmemlock:\t4096\nprog_id:\t4242\nrun_time_ns:\t0\nrun_cnt:\t0\n"
	id, err := progIDFromFdinfo(strings.NewReader(fdinfo))
	if err != nil || id != 4242 {
		t.Fatalf("got %d, %v; want 4242", id, err)
	}
	if _, err := progIDFromFdinfo(strings.NewReader("pos:\t0\nmap_id:\t7\n")); err == nil {
		t.Fatal("a map's fdinfo has no prog_id and must be an error")
	}
}
