package probe

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseLockdown(t *testing.T) {
	for in, want := range map[string]string{
		"[none] integrity confidentiality\n": "none",
		"none [integrity] confidentiality":   "integrity",
		"none integrity [confidentiality]":   "confidentiality",
	} {
		if got, err := ParseLockdown(in); err != nil || got != want {
			t.Errorf("ParseLockdown(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "none integrity confidentiality", "[none] [integrity]", "[paranoid]", "[]"} {
		if got, err := ParseLockdown(in); !errors.Is(err, ErrLockdownFormat) {
			t.Errorf("ParseLockdown(%q) = %q, %v; want ErrLockdownFormat", in, got, err)
		}
	}
}

func TestParseOSRelease(t *testing.T) {
	kv := ParseOSRelease(`# comment
NAME="Amazon Linux"
ID=amzn
VERSION_ID='2'
PRETTY_NAME="Say \"hi\" \\ there"
EMPTY=
BROKEN="unterminated
 SPACED = x
=novalue
`)
	for k, want := range map[string]string{"NAME": "Amazon Linux", "ID": "amzn", "VERSION_ID": "2", "PRETTY_NAME": `Say "hi" \ there`, "EMPTY": "", "SPACED": "x"} {
		if got, ok := kv[k]; !ok || got != want {
			t.Errorf("%s = %q (present %v), want %q", k, got, ok, want)
		}
	}
	if _, ok := kv["BROKEN"]; ok {
		t.Errorf("an unterminated quote was accepted: %q", kv["BROKEN"])
	}
	if len(kv) != 6 {
		t.Errorf("got %d keys: %v", len(kv), kv)
	}
}

func FuzzParseLockdown(f *testing.F) {
	for _, s := range []string{"none [integrity] confidentiality", "[none]", "[", "]", "[[x]]", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mode, err := ParseLockdown(s)
		if err == nil && mode != LockdownNone && mode != LockdownIntegrity && mode != LockdownConfidentiality {
			t.Fatalf("ParseLockdown(%q) = %q without error", s, mode)
		}
	})
}

func FuzzParseOSRelease(f *testing.F) {
	for _, s := range []string{"ID=cos\nVERSION_ID=117\n", `PRETTY_NAME="a \"b\""`, "ID='x", "=\n==\n\"", "A=\"\\\"", "ID=\"\\"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for k := range ParseOSRelease(s) {
			if k == "" || strings.ContainsAny(k, "\n=") {
				t.Fatalf("ParseOSRelease(%q) produced key %q", s, k)
			}
		}
	})
}

// TestBoundingSet reads CapBnd of the host's PID 1 below the root, and says why where it cannot.
func TestBoundingSet(t *testing.T) {
	f := (&Prober{Root: "testdata/firecracker-6.18"}).boundingSet()
	if f.Value != "000001fffeffffff" || !strings.Contains(f.Source, "proc/1/status") {
		t.Errorf("firecracker-6.18: %+v, want 000001fffeffffff from proc/1/status", f)
	}
	root := t.TempDir()
	if f := (&Prober{Root: root}).boundingSet(); f.Value != "" || f.Error == "" {
		t.Errorf("no /proc: %+v, want unknown with an error", f)
	}
	if err := os.MkdirAll(filepath.Join(root, "proc/1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "proc/1/status"), []byte("Name:\tinit\nCapBnd:\tzz\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if f := (&Prober{Root: root}).boundingSet(); f.Value != "" || !strings.Contains(f.Error, "zz") {
		t.Errorf("bad CapBnd: %+v, want unknown naming the value", f)
	}
}
