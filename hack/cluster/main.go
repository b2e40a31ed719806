// Command cluster runs DriverPilot on a real single-node Kubernetes cluster built on this machine
// (internal/localcluster) and removes it without a trace. Use it through hack/cluster.sh, which
// builds the parts first:
//
//	hack/cluster.sh run    # the cluster, the operator installed as the README says, the sample
//	                       # profile; waits until the node is verified, then until Ctrl-C
//	hack/cluster.sh up     # only the cluster, until Ctrl-C
//	hack/cluster.sh down   # removes what a killed run left behind
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/localcluster"
	"github.com/driverpilot/driverpilot/internal/testenv"
)

func main() {
	var cfg localcluster.Config
	var images string
	flag.StringVar(&cfg.KubeBin, "kube-bin", "", "directory with etcd and the Kubernetes binaries (hack/envtest-assets.sh)")
	flag.StringVar(&cfg.NodeBin, "node-bin", "", "directory with containerd, its shim, ctr and runc (hack/node-assets.sh)")
	flag.StringVar(&cfg.StateDir, "state-dir", localcluster.DefaultStateDir, "where the cluster keeps its state")
	flag.StringVar(&images, "images", "", "comma-separated image archives to import (the driverpilot image from make image)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: cluster [flags] run|up|down")
		flag.PrintDefaults()
	}
	flag.Parse()
	cfg.Log = os.Stdout
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	var err error
	switch flag.Arg(0) {
	case "run", "up":
		err = run(cfg, flag.Arg(0) == "run", splitList(images))
	case "down":
		err = localcluster.Cleanup(cfg)
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

func run(cfg localcluster.Config, install bool, images []string) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	pause, err := localcluster.BuildImageFromPackage(root, "./hack/cluster/pause", localcluster.PauseImage, filepath.Join(root, "bin", "images"))
	if err != nil {
		return err
	}
	c, err := localcluster.Up(ctx, cfg, append([]string{pause}, images...)...)
	if err != nil {
		return err
	}
	defer func() {
		stop() // a second Ctrl-C during teardown must not interrupt it
		err = errors.Join(err, c.Down())
	}()
	fmt.Printf("\nThe cluster is up: export KUBECONFIG=%s (kubectl: %s)\n", c.Kubeconfig(), c.KubectlPath())
	if install {
		start := time.Now()
		if err := c.Install(ctx, root); err != nil {
			return err
		}
		if err := waitVerified(ctx, c); err != nil {
			return err
		}
		fmt.Printf("\nNode %s is verified, %s after the install began.\n", c.NodeName(), time.Since(start).Round(100*time.Millisecond))
		for _, args := range [][]string{
			{"get", "secprof"}, {"get", "nsensor", "-o", "wide"},
			{"get", "nodes", "-o", `custom-columns=NODE:.metadata.name,RUNTIME-SECURITY:.status.conditions[?(@.type=="RuntimeSecurityReady")].status,REASON:.status.conditions[?(@.type=="RuntimeSecurityReady")].reason`},
			{"-n", "driverpilot-system", "get", "pods", "-o", "wide"},
		} {
			out, _ := c.Kubectl(ctx, args...)
			fmt.Printf("\n$ kubectl %s\n%s", strings.Join(args, " "), out)
		}
	}
	fmt.Println("\nCtrl-C tears the cluster down and restores the host.")
	<-ctx.Done()
	return nil
}

// waitVerified waits until the node's RuntimeSecurityReady condition is True, printing changes.
func waitVerified(ctx context.Context, c *localcluster.Cluster) error {
	last := ""
	for {
		cond, err := c.NodeCondition(ctx, v1alpha1.NodeConditionRuntimeSecurityReady)
		if err == nil && cond != nil {
			if s := string(cond.Status) + " " + cond.Reason + ": " + cond.Message; s != last {
				fmt.Printf("RuntimeSecurityReady=%s\n", s)
				last = s
			}
			if cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
