//go:build !matrixguest

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/controllers"
	"github.com/driverpilot/driverpilot/internal/scheme"
)

func init() {
	subcommands["fleet-export"] = subcommand{runFleetExport, "export what a profile's fleet learned as a known-issue file"}
}

// runFleetExport writes the drivers a profile's node groups learned to fail (FleetGroups with
// verdict Fails) in the known-issue file format, for the manager's --known-issues (pinned) or
// for an upstream report.
func runFleetExport(args []string) error {
	fs := flag.NewFlagSet("fleet-export", flag.ContinueOnError)
	profile := fs.String("profile", "", "the SecurityProfile whose fleet matrix to export (required)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: the usual lookup)")
	reference := fs.String("reference", knownissues.FleetReference, "the https reference each entry carries (an upstream issue when you report one)")
	embedded := fs.Bool("with-embedded", false, "also write the embedded known-issue matrix, so the file can replace it as the manager's --known-issues")
	out := fs.String("o", "-", "output file, - for stdout")
	if err := fs.Parse(args); err != nil || *profile == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: driverpilot fleet-export --profile NAME [--with-embedded] [--reference URL] [-o FILE]")
		return errUsage
	}
	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	w := io.Writer(os.Stdout)
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exportFleet(ctx, c, *profile, *reference, *embedded, w)
}

// exportFleet reads the profile's FleetGroups and writes them as a known-issue document.
func exportFleet(ctx context.Context, c client.Reader, profile, reference string, withEmbedded bool, w io.Writer) error {
	var groups v1alpha1.FleetGroupList
	if err := c.List(ctx, &groups, client.MatchingLabels{controllers.ProfileLabel: profile}); err != nil {
		return fmt.Errorf("list fleet groups: %w", err)
	}
	f, err := knownissues.FromFleet(profile, groups.Items, reference)
	if err != nil {
		return err
	}
	header := fmt.Sprintf("Learned by the nodes of SecurityProfile %s (driverpilot fleet-export): %d drivers that failed\n"+
		"their self-test for a reason of the kernel on a group of nodes, out of %d groups.", profile, len(f.Issues), len(groups.Items))
	if withEmbedded {
		builtin, err := knownissues.Default()
		if err != nil {
			return err
		}
		f.Issues = append(builtin, f.Issues...)
		header += "\nThe embedded known-issue matrix comes first: this file can replace it (manager --known-issues)."
	}
	data, err := knownissues.Marshal(f, header)
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}
