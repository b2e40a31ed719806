package localcluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestREADMEInstallIsWhatTheClusterRuns keeps the README's kustomize install and InstallSteps
// (run by make run and test/cluster) the same commands.
func TestREADMEInstallIsWhatTheClusterRuns(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "### With kustomize")
	if !ok {
		t.Fatal("README has no \"### With kustomize\" section")
	}
	_, block, _ := strings.Cut(section, "```sh\n")
	block, _, _ = strings.Cut(block, "```")
	var readme []string
	for _, line := range strings.Split(block, "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.TrimSpace(line); line != "" {
			readme = append(readme, line)
		}
	}
	var steps []string
	for _, s := range InstallSteps {
		steps = append(steps, "kubectl "+strings.Join(s, " "))
	}
	if strings.Join(readme, "\n") != strings.Join(steps, "\n") {
		t.Errorf("README install:\n%s\nInstallSteps:\n%s", strings.Join(readme, "\n"), strings.Join(steps, "\n"))
	}
}
