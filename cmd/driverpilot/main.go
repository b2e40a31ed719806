// Command driverpilot is DriverPilot's one binary: the manager, the node agent, and the probe and
// self-test a person can run by hand on a node.
//
// Built with -tags matrixguest it holds only probe and selftest (the commands that talk to no API
// server): the kernel matrix cross-builds that for its arm64 guest, a third of the packages to
// compile. The shipped binary is always built without the tag.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/driverpilot/driverpilot/internal/version"
)

// subcommand is one command's entry point and its line in the usage.
type subcommand struct {
	run   func(args []string) error
	usage string
}

// subcommands maps each subcommand to its entry point; each lives in its own file. The commands
// that talk to the API server register themselves from their files (see the matrixguest tag).
var subcommands = map[string]subcommand{
	"probe":    {runProbe, "print this machine's facts and the driver decision"},
	"selftest": {runSelftest, "run the exe_upper_layer self-test on this machine"},
}

// errUsage marks a command-line mistake: exit code 2.
var errUsage = errors.New("usage")

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		printUsage()
		os.Exit(2)
	}
	if os.Args[1] == "version" || os.Args[1] == "--version" {
		fmt.Println(version.Version)
		return
	}
	cmd, ok := subcommands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "driverpilot: unknown command %q\n", os.Args[1])
		printUsage()
		os.Exit(2)
	}
	if err := cmd.run(os.Args[2:]); err != nil {
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		var exit exitError
		if errors.As(err, &exit) {
			os.Exit(exit.code)
		}
		fmt.Fprintf(os.Stderr, "driverpilot %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// exitError ends the process with a code and no further message (the command printed its own).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func printUsage() {
	fmt.Fprintf(os.Stderr, "usage: driverpilot <command> [flags]\n\ncommands:\n")
	for _, name := range []string{"manager", "agent", "probe", "selftest", "falco-config", "fleet-export"} {
		if c, ok := subcommands[name]; ok {
			fmt.Fprintf(os.Stderr, "  %-12s %s\n", name, c.usage)
		}
	}
	fmt.Fprintf(os.Stderr, "  %-12s %s\n", "version", "print the version")
}
