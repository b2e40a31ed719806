package imagebuild

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fakeELF writes a 64-byte ELF header for machine with no program headers: static, as far as
// checkStatic can tell.
func fakeELF(t *testing.T, machine elf.Machine) string {
	t.Helper()
	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1 // 64-bit, little-endian, version 1
	le := binary.LittleEndian
	le.PutUint16(h[16:], uint16(elf.ET_EXEC))
	le.PutUint16(h[18:], uint16(machine))
	le.PutUint32(h[20:], 1)
	le.PutUint16(h[52:], 64) // e_ehsize
	le.PutUint16(h[54:], 56) // e_phentsize
	path := filepath.Join(t.TempDir(), "driverpilot-"+machine.String())
	if err := os.WriteFile(path, h, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestBuildIndex(t *testing.T) {
	amd := Options{Binary: fakeELF(t, elf.EM_X86_64), Version: "1.0.0", Revision: "abc"}
	arm := Options{Binary: fakeELF(t, elf.EM_AARCH64), Architecture: "arm64", Version: "1.0.0", Revision: "abc"}

	if _, err := Build(Options{Binary: arm.Binary, Version: "1.0.0", Revision: "abc"}); !errors.Is(err, ErrNotStatic) {
		t.Errorf("an arm64 binary in an amd64 image: %v, want ErrNotStatic", err)
	}
	if _, err := BuildIndex(amd, amd); err == nil {
		t.Error("two amd64 images in one index must be refused")
	}
	idx, err := BuildIndex(amd, arm)
	if err != nil {
		t.Fatal(err)
	}
	again, err := BuildIndex(amd, arm)
	if err != nil {
		t.Fatal(err)
	}
	d1, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	d2, err := again.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 {
		t.Errorf("two builds of the same index: %s and %s", d1, d2)
	}

	dir := filepath.Join(t.TempDir(), "oci")
	if err := WriteLayoutIndex(dir, "ghcr.io/driverpilot/driverpilot:1.0.0", idx); err != nil {
		t.Fatal(err)
	}
	top, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	tm, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(tm.Manifests) != 1 || tm.Manifests[0].MediaType != types.OCIImageIndex || tm.Manifests[0].Digest != d1 {
		t.Fatalf("layout: %+v, want the index %s", tm.Manifests, d1)
	}
	inner, err := top.ImageIndex(d1)
	if err != nil {
		t.Fatal(err)
	}
	im, err := inner.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 {
		t.Fatalf("index has %d manifests, want 2", len(im.Manifests))
	}
	for i, want := range []string{"amd64", "arm64"} {
		desc := im.Manifests[i]
		if desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != want {
			t.Errorf("manifest %d platform %+v, want linux/%s", i, desc.Platform, want)
		}
		img, err := inner.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != want || cf.OS != "linux" {
			t.Errorf("image %d config platform %s/%s, want linux/%s", i, cf.OS, cf.Architecture, want)
		}
	}
}
