// Package imagebuild builds DriverPilot's container image without a container engine: the
// static driverpilot binary on a minimal distroless-style root (passwd and group with the
// nonroot user 65532, /tmp, /home/nonroot), with the configuration of the Dockerfile
// (entrypoint /driverpilot, command manager, user 65532) and OCI labels, for linux/amd64 and
// linux/arm64. BuildIndex puts one image per architecture into a multi-architecture image index.
//
// The image is reproducible: file times and the creation time are one fixed instant, so the
// same binary, version and revision always give the same digest.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Image settings shared with the Dockerfile.
const (
	Entrypoint = "/driverpilot"
	Command    = "manager"
	User       = "65532:65532"
	Source     = "https://github.com/driverpilot/driverpilot"
	Title      = "driverpilot"
)

// Options describe the image to build.
type Options struct {
	// Binary is the static linux driverpilot executable for Architecture.
	Binary string
	// Architecture is the image's platform architecture in GOARCH spelling: amd64 (the default
	// when empty) or arm64. The binary must be built for it.
	Architecture string
	// Version and Revision (the git commit) go into the OCI labels.
	Version, Revision string
	// Created is the image creation time and every file's time (SOURCE_DATE_EPOCH); zero
	// means the Unix epoch.
	Created time.Time
}

// ErrNotStatic says the binary would not run on an image without a C library, or not on the
// image's architecture.
var ErrNotStatic = errors.New("not a static linux executable for the image's architecture")

// machines maps the supported architectures to their ELF machine.
var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

func (o Options) arch() string {
	if o.Architecture == "" {
		return "amd64"
	}
	return o.Architecture
}

// Labels returns the OCI labels of the image.
func Labels(o Options) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       Title,
		"org.opencontainers.image.description": "DriverPilot: per-node runtime-security driver selection, proven by a self-test (manager and node agent)",
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.source":      Source,
		"org.opencontainers.image.revision":    o.Revision,
		"org.opencontainers.image.created":     o.created().Format(time.RFC3339),
	}
}

func (o Options) created() time.Time {
	if o.Created.IsZero() {
		return time.Unix(0, 0).UTC()
	}
	return o.Created.UTC()
}

// Build builds the image.
func Build(o Options) (v1.Image, error) {
	if o.Version == "" || o.Revision == "" {
		return nil, errors.New("version and revision are required")
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, err
	}
	if _, ok := machines[o.arch()]; !ok {
		return nil, fmt.Errorf("architecture %q: want amd64 or arm64", o.Architecture)
	}
	if err := checkStatic(bin, machines[o.arch()]); err != nil {
		return nil, fmt.Errorf("%s: %w", o.Binary, err)
	}
	t := o.created()
	base, err := layer(t, []entry{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/passwd", mode: 0o644, data: "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"},
		{name: "etc/group", mode: 0o644, data: "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"},
		{name: "home/", mode: 0o755, dir: true},
		{name: "home/nonroot/", mode: 0o700, dir: true, uid: 65532},
		{name: "root/", mode: 0o700, dir: true},
		// The agent stages its self-test overlay under the temporary directory.
		{name: "tmp/", mode: 0o1777, dir: true},
	})
	if err != nil {
		return nil, err
	}
	app, err := layer(t, []entry{{name: "driverpilot", mode: 0o755, data: string(bin)}})
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, MediaType: types.OCILayer, History: v1.History{Created: v1.Time{Time: t}, CreatedBy: "driverpilot base: passwd, group, /tmp, /home/nonroot", Comment: "hack/image"}},
		mutate.Addendum{Layer: app, MediaType: types.OCILayer, History: v1.History{Created: v1.Time{Time: t}, CreatedBy: "COPY driverpilot /driverpilot", Comment: "hack/image"}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = o.arch(), "linux"
	cf.Created = v1.Time{Time: t}
	cf.Config = v1.Config{
		Entrypoint: []string{Entrypoint},
		Cmd:        []string{Command},
		User:       User,
		WorkingDir: "/",
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Labels:     Labels(o),
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	return mutate.Annotations(img, Labels(o)).(v1.Image), nil
}

// checkStatic accepts an ELF executable for machine without an interpreter (no dynamic loader).
func checkStatic(bin []byte, machine elf.Machine) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotStatic, err)
	}
	if f.Machine != machine || (f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN) {
		return fmt.Errorf("%w: machine %v, type %v", ErrNotStatic, f.Machine, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%w: it needs a dynamic loader (build with CGO_ENABLED=0)", ErrNotStatic)
		}
	}
	return nil
}

type entry struct {
	name string
	mode int64
	dir  bool
	uid  int
	data string
}

// layer makes an uncompressed tar of entries, all owned by root unless told, all at time t.
func layer(t time.Time, entries []entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: t, Uid: e.uid, Gid: e.uid, Format: tar.FormatPAX}
		if e.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// WriteTarball writes the image as a `docker save` archive tagged ref (docker load,
// podman load, kind load image-archive, crane push all read it).
func WriteTarball(path, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, tag, img)
}

// WriteLayout writes the image as an OCI image layout directory, replacing what was there,
// with ref as its reference name (skopeo copy oci:DIR:REF, crane push --index).
func WriteLayout(dir, ref string, img v1.Image) error {
	p, err := newLayout(dir)
	if err != nil {
		return err
	}
	return p.AppendImage(img, refName(ref))
}

// newLayout makes an empty OCI image layout at dir, replacing what was there.
func newLayout(dir string) (layout.Path, error) {
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	return layout.Write(dir, empty.Index)
}

func refName(ref string) layout.Option {
	return layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})
}

// BuildIndex builds one image per Options (one per architecture) and puts them in a
// multi-architecture OCI image index, each with its platform (linux/<arch>), in the given order.
// The index carries the labels as annotations; it is as reproducible as its images.
func BuildIndex(opts ...Options) (v1.ImageIndex, error) {
	if len(opts) == 0 {
		return nil, errors.New("no images for the index")
	}
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	seen := map[string]bool{}
	for _, o := range opts {
		if seen[o.arch()] {
			return nil, fmt.Errorf("architecture %s given twice", o.arch())
		}
		seen[o.arch()] = true
		img, err := Build(o)
		if err != nil {
			return nil, fmt.Errorf("linux/%s: %w", o.arch(), err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Platform:  &v1.Platform{OS: "linux", Architecture: o.arch()},
		}})
	}
	return mutate.Annotations(idx, Labels(opts[0])).(v1.ImageIndex), nil
}

// WriteLayoutIndex writes a multi-architecture index as an OCI image layout directory, replacing
// what was there, with ref as the index's reference name (skopeo copy --all oci:DIR:REF,
// ctr images import --all-platforms, crane push --index).
func WriteLayoutIndex(dir, ref string, idx v1.ImageIndex) error {
	p, err := newLayout(dir)
	if err != nil {
		return err
	}
	return p.AppendIndex(idx, refName(ref))
}
