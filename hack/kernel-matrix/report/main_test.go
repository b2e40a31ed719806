package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadManifest(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "console.log")
	if err := os.WriteFile(log, []byte("boot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(dir, "manifest.tsv")
	lines := strings.Join([]string{
		"5.10.0-32-amd64\tabc\t30.5\t0\t" + log + "\toverlay-btf=false\tfaults=all-lower,drop-events",
		"host-6.18\tdef\t9\t0\t" + log + "\tfaults=all-lower",
		"6.1.0-56-cloud-amd64\tghi\t8\t124\t" + filepath.Join(dir, "missing.log") + "\toverlay-btf=true",
	}, "\n")
	if err := os.WriteFile(manifest, []byte(lines+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	boots, err := readManifest(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if len(boots) != 3 {
		t.Fatalf("%d boots, want 3", len(boots))
	}
	if b := boots[0]; b.OverlayBTF == nil || *b.OverlayBTF || strings.Join(b.Faults, ",") != "all-lower,drop-events" || string(b.Log) != "boot\n" {
		t.Errorf("first boot: %+v", b)
	}
	if b := boots[1]; b.OverlayBTF != nil || len(b.Faults) != 1 {
		t.Errorf("host boot: %+v", b)
	}
	if b := boots[2]; b.QemuRC != 124 || b.Log != nil || b.OverlayBTF == nil || !*b.OverlayBTF {
		t.Errorf("killed boot: %+v", b)
	}

	if err := os.WriteFile(manifest, []byte("k\tn\t1\t0\t"+log+"\tcolour=blue\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readManifest(manifest); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("unknown field: %v", err)
	}
}
