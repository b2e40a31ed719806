package testutil

import (
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"testing"
)

// modulePath is this module's path (go.mod).
const modulePath = "github.com/driverpilot/driverpilot"

// BuildPackage builds a static binary of a package of this module, named by its path in the
// module (for example "./cmd/driverpilot"), into the test's temporary directory and returns
// its path. It works from any package directory of the module.
func BuildPackage(t testing.TB, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), path.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, path.Join(modulePath, pkg))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	return bin
}
