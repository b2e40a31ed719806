package localcluster

import (
	"context"
	"strings"
	"time"
)

// InstallSteps are the commands the README's "Install" section gives a user, run from the
// repository root: the operator (CRDs, RBAC, the agent's permissions and admission policies, the
// manager), then a profile.
var InstallSteps = [][]string{
	{"apply", "--server-side", "-k", "config/default"},
	{"-n", "driverpilot-system", "rollout", "status", "deployment/driverpilot-manager", "--timeout=180s"},
	{"apply", "-f", "config/samples/security_v1alpha1_securityprofile.yaml"},
}

// Install runs InstallSteps with the cluster's kubectl from repoRoot.
func (c *Cluster) Install(ctx context.Context, repoRoot string) error {
	for _, step := range InstallSteps {
		if err := c.kubectlIn(ctx, repoRoot, step...); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) kubectlIn(ctx context.Context, dir string, args ...string) error {
	c.logf("kubectl %s", strings.Join(args, " "))
	start := time.Now()
	out, err := c.KubectlIn(ctx, dir, args...)
	if err != nil {
		return err
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		c.logf("  %s", l)
	}
	if d := time.Since(start); d > 5*time.Second {
		c.logf("  (%s)", d.Round(100*time.Millisecond))
	}
	return nil
}
