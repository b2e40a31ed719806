// Command image builds DriverPilot's container image from the static binary without a container
// engine, as a `docker save` archive and an OCI image layout under dist/ (`make image`).
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
	if err := imagebuild.WriteLayout(oci, *tag, img); err != nil {
		fail(err)
	}
	digest, err := img.Digest()
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s %s\nwrote %s (docker load) and %s (OCI layout)\n", *tag, digest, archive, oci)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "image:", err)
	os.Exit(1)
}
