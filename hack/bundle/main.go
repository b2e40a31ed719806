// Command bundle regenerates DriverPilot's OLM bundle (bundle/ and bundle.Dockerfile) from
// config/: `make bundle VERSION=x.y.z` runs it from the repository root.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/driverpilot/driverpilot/hack/bundle/bundlegen"
)

func main() {
	var o bundlegen.Options
	flag.StringVar(&o.Root, "root", ".", "repository root")
	flag.StringVar(&o.Version, "version", "", "operator version x.y.z (required)")
	flag.StringVar(&o.Replaces, "replaces", "", "version this one upgrades from (default: from the committed bundle; \"none\" for none)")
	flag.StringVar(&o.Image, "image", "", "manager and agent image (default "+bundlegen.ImageRepo+":VERSION)")
	flag.Parse()
	if o.Version == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	b, err := bundlegen.Generate(o)
	if err == nil {
		err = bundlegen.Write(o.Root, b.Files)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bundle:", err)
		os.Exit(1)
	}
	for _, f := range b.Files {
		fmt.Println("wrote", f.Path)
	}
	for _, l := range b.LeftOut {
		fmt.Println("not in the bundle:", l)
	}
}
