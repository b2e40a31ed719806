// Command image builds DriverPilot's container image from the static binary without a container
// engine, as a `docker save` archive and an OCI image layout under dist/ (`make image`).
//
// With --binary-arm64 as well, the OCI layout holds a multi-architecture image index
// (linux/amd64 and linux/arm64) under the tag, and each architecture also gets its own
// `docker save` archive: driverpilot-VERSION.tar (amd64, as without it) and
// driverpilot-VERSION-arm64.tar.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/driverpilot/driverpilot/hack/image/imagebuild"
)

func main() {
	var o imagebuild.Options
	flag.StringVar(&o.Binary, "binary", "bin/driverpilot", "static linux/amd64 driverpilot binary")
	arm64 := flag.String("binary-arm64", "", "static linux/arm64 driverpilot binary: makes the OCI layout a multi-architecture index")
	flag.StringVar(&o.Version, "version", "", "version label (required)")
	flag.StringVar(&o.Revision, "revision", "", "git commit label (required)")
	tag := flag.String("tag", "", "image reference (default ghcr.io/driverpilot/driverpilot:VERSION)")
	out := flag.String("out", "dist", "output directory")
	epoch := flag.String("source-date-epoch", os.Getenv("SOURCE_DATE_EPOCH"), "creation time in Unix seconds (default $SOURCE_DATE_EPOCH, else 0)")
	flag.Parse()
	if o.Version == "" || o.Revision == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *epoch != "" {
		s, err := strconv.ParseInt(*epoch, 10, 64)
		if err != nil {
			fail(fmt.Errorf("source date epoch: %w", err))
		}
		o.Created = time.Unix(s, 0)
	}
	if *tag == "" {
		*tag = "ghcr.io/driverpilot/driverpilot:" + o.Version
	}
	img, err := imagebuild.Build(o)
	if err != nil {
		fail(err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fail(err)
	}
	archive := filepath.Join(*out, "driverpilot-"+o.Version+".tar")
	if err := imagebuild.WriteTarball(archive, *tag, img); err != nil {
		fail(err)
	}
	oci := filepath.Join(*out, "oci")
	if *arm64 == "" {
		if err := imagebuild.WriteLayout(oci, *tag, img); err != nil {
			fail(err)
		}
		digest, err := img.Digest()
		if err != nil {
			fail(err)
		}
		fmt.Printf("%s %s\nwrote %s (docker load) and %s (OCI layout)\n", *tag, digest, archive, oci)
		return
	}
	oa := o
	oa.Binary, oa.Architecture = *arm64, "arm64"
	armImg, err := imagebuild.Build(oa)
	if err != nil {
		fail(err)
	}
	armArchive := filepath.Join(*out, "driverpilot-"+o.Version+"-arm64.tar")
	if err := imagebuild.WriteTarball(armArchive, *tag, armImg); err != nil {
		fail(err)
	}
	idx, err := imagebuild.BuildIndex(o, oa)
	if err != nil {
		fail(err)
	}
	if err := imagebuild.WriteLayoutIndex(oci, *tag, idx); err != nil {
		fail(err)
	}
	digest, err := idx.Digest()
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s %s (index: linux/amd64, linux/arm64)\nwrote %s and %s (docker load, one architecture each) and %s (OCI layout)\n",
		*tag, digest, archive, armArchive, oci)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "image:", err)
	os.Exit(1)
}
