package deploy

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/driverpilot/driverpilot/hack/image/imagebuild"
)

// buildBinary builds driverpilot the way `make build` does, with version.
func buildBinary(t *testing.T, version string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "driverpilot")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags",
		"-s -w -X github.com/driverpilot/driverpilot/internal/version.Version="+version, "-o", out, "./cmd/driverpilot")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// TestImage builds the image with hack/image (what `make image` runs) and reads the archive
// back: configuration, labels, platform and files as the Dockerfile makes them, and the binary
// in it is static and reports the labelled version.
func TestImage(t *testing.T) {
	const version, revision = "9.8.7", "0123456789abcdef0123456789abcdef01234567"
	bin := buildBinary(t, version)
	dist := t.TempDir()
	cmd := exec.Command("go", "run", "./hack/image", "--binary", bin, "--version", version, "--revision", revision,
		"--source-date-epoch", "1700000000", "--out", dist)
	cmd.Dir = repoRoot(t)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/image: %v\n%s", err, b)
	}

	ref := "ghcr.io/driverpilot/driverpilot:" + version
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(filepath.Join(dist, "driverpilot-"+version+".tar"), &tag)
	if err != nil {
		t.Fatalf("read the archive back: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if strings.Join(c.Entrypoint, " ") != "/driverpilot" || strings.Join(c.Cmd, " ") != "manager" || c.User != "65532:65532" {
		t.Errorf("entrypoint %q cmd %q user %q, want /driverpilot manager 65532:65532", c.Entrypoint, c.Cmd, c.User)
	}
	if cf.Architecture != "amd64" || cf.OS != "linux" {
		t.Errorf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	for k, want := range map[string]string{
		"org.opencontainers.image.title":    "driverpilot",
		"org.opencontainers.image.version":  version,
		"org.opencontainers.image.source":   "https://github.com/driverpilot/driverpilot",
		"org.opencontainers.image.revision": revision,
		"org.opencontainers.image.created":  "2023-11-14T22:13:20Z",
	} {
		if got := c.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}
	if cf.Created.Unix() != 1700000000 {
		t.Errorf("created %v, want the source date epoch", cf.Created)
	}

	// The files, from the flattened layers.
	files := map[string]*tar.Header{}
	var inImage []byte
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(h.Name, "/")] = h
		if h.Name == "driverpilot" {
			if inImage, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	if h := files["driverpilot"]; h == nil || h.Mode&0o111 == 0 || h.Uid != 0 {
		t.Fatalf("/driverpilot missing or not an executable owned by root: %+v", h)
	}
	if h := files["tmp"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode&0o1777 != 0o1777 {
		t.Errorf("/tmp is not a sticky world-writable directory: %+v", h)
	}
	if h := files["home/nonroot"]; h == nil || h.Uid != 65532 {
		t.Errorf("/home/nonroot is not the nonroot user's: %+v", h)
	}
	for _, f := range []string{"etc/passwd", "etc/group"} {
		if files[f] == nil {
			t.Errorf("/%s missing", f)
		}
	}
	orig, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if string(orig) != string(inImage) {
		t.Error("/driverpilot in the image is not the binary it was built from")
	}
	extracted := filepath.Join(t.TempDir(), "driverpilot")
	if err := os.WriteFile(extracted, inImage, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(extracted, "version").Output()
	if err != nil || strings.TrimSpace(string(out)) != version {
		t.Errorf("the image's binary says %q (%v), the label says %s", out, err, version)
	}

	// The OCI layout holds the same image (same configuration, so the same layers) under the
	// same reference, with the labels also as manifest annotations. (A docker archive keeps no
	// manifest, so the manifest digests differ.)
	idx, err := layout.ImageIndexFromPath(filepath.Join(dist, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != ref {
		t.Fatalf("OCI layout index %+v, want one image named %s", im.Manifests, ref)
	}
	ociImg, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	wantCfg, _ := img.ConfigName()
	gotCfg, _ := ociImg.ConfigName()
	if gotCfg != wantCfg {
		t.Errorf("OCI layout config %s, archive config %s", gotCfg, wantCfg)
	}
	m, err := ociImg.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.Annotations["org.opencontainers.image.revision"] != revision {
		t.Errorf("OCI manifest %s with annotations %v", m.MediaType, m.Annotations)
	}
}

// TestImageIsReproducible builds twice from the same binary: the same digest.
func TestImageIsReproducible(t *testing.T) {
	bin := buildBinary(t, "1.0.0")
	o := imagebuild.Options{Binary: bin, Version: "1.0.0", Revision: "abc"}
	a, err := imagebuild.Build(o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := imagebuild.Build(o)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("two builds of the same input: %s and %s", da, db)
	}
}

// TestImageRefusesDynamicBinary: a binary that needs a C library would not start on this
// base, so the build refuses it.
func TestImageRefusesDynamicBinary(t *testing.T) {
	ls, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	_, err = imagebuild.Build(imagebuild.Options{Binary: ls, Version: "1.0.0", Revision: "abc"})
	if !errors.Is(err, imagebuild.ErrNotStatic) {
		t.Errorf("building from %s (dynamically linked): %v, want ErrNotStatic", ls, err)
	}
}

// TestDockerfileMatchesImage keeps the Dockerfile and `make image` describing one image, and
// the Dockerfile's Go the one go.mod names.
func TestDockerfileMatchesImage(t *testing.T) {
	root := repoRoot(t)
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var goVersion string
	for _, l := range strings.Split(string(gomod), "\n") {
		if v, ok := strings.CutPrefix(l, "go "); ok {
			goVersion = strings.TrimSpace(v)
		}
	}
	for _, want := range []string{
		"golang:" + goVersion + "-",
		"USER " + imagebuild.User + "\n",
		`ENTRYPOINT ["` + imagebuild.Entrypoint + `"]`,
		`CMD ["` + imagebuild.Command + `"]`,
		"org.opencontainers.image.source=" + imagebuild.Source,
		"CGO_ENABLED=0",
	} {
		if !strings.Contains(string(df), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
