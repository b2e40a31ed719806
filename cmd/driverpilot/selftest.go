package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/driverpilot/driverpilot/agent/selftest"
	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// runSelftest starts the built-in sensor with a driver, runs the self-test checks against it and
// prints the verdict. It exits 1 unless every requested check passed.
func runSelftest(args []string) error {
	fs := flag.NewFlagSet("selftest", flag.ContinueOnError)
	driver := fs.String("driver", "", "driver to start the built-in sensor with: modern_ebpf or ebpf (kmod is reported as not supported)")
	checks := fs.String("checks", "", "comma-separated checks (default all): "+joinChecks(v1alpha1.AllChecks))
	timeout := fs.Duration("timeout", selftest.DefaultTimeout, "how long each check waits for its event")
	output := fs.String("o", "text", "output format: text or json (the SelfTestStatus)")
	alerts := fs.String("alerts", "", "write a Falco-shaped JSON line per upper-layer exec to FILE, or - for stdout")
	inodeOffsetOnly := fs.Bool("inode-offset-only", false, "skip the CO-RE method in the kernel program, as on a kernel without overlay BTF, so the inode-offset method decides")
	workdir := fs.String("workdir", os.TempDir(), "directory the private overlay is staged in (any writable filesystem; tmpfs is fine)")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	usage := func(format string, a ...any) error {
		fmt.Fprintf(os.Stderr, "driverpilot selftest: "+format+"\n", a...)
		fs.Usage()
		return errUsage
	}
	if fs.NArg() > 0 {
		return usage("unexpected arguments %q", fs.Args())
	}
	d := v1alpha1.Driver(*driver)
	if !isDriver(d) {
		return usage("--driver must be one of %v", v1alpha1.AllDrivers)
	}
	checkNames, err := parseChecks(*checks)
	if err != nil {
		return usage("--checks: %v", err)
	}
	if *timeout <= 0 {
		return usage("--timeout must be positive")
	}
	if *output != "text" && *output != "json" {
		return usage("-o must be text or json")
	}

	var alertOut io.Writer
	switch *alerts {
	case "":
	case "-":
		alertOut = os.Stdout
	default:
		f, err := os.Create(*alerts)
		if err != nil {
			return fmt.Errorf("open alerts file: %w", err)
		}
		defer f.Close()
		alertOut = f
	}

	// A test hook, not an option: the kernel matrix proves that the self-test fails with a faulty
	// sensor (agent/selftest/fault.go). The agent never reads it.
	fault, err := selftest.ParseFault(os.Getenv(selftest.FaultEnv))
	if err != nil {
		return usage("%s: %v", selftest.FaultEnv, err)
	}

	// Interrupts cancel the run, which still unmounts and removes what it staged.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	s := sensor.NewBuiltin(sensor.Options{Alerts: alertOut, ForceInodeOffset: *inodeOffsetOnly})
	status := selftest.Run(ctx, selftest.WithFault(s, fault), selftest.Options{
		Driver:  d,
		Checks:  checkNames,
		Timeout: *timeout,
		WorkDir: *workdir,
	})
	// Closing detaches the program and flushes the last alerts before the verdict is printed.
	closeErr := s.Close()
	if fault != selftest.FaultNone {
		// Nobody may mistake this verdict for the sensor's own.
		status.Message = fmt.Sprintf("fault injected (%s=%s): %s", selftest.FaultEnv, fault, status.Message)
	}

	if *output == "json" {
		b, err := json.MarshalIndent(status, "", "  ")
		if err != nil {
			return fmt.Errorf("encode verdict: %w", err)
		}
		fmt.Println(string(b))
	} else {
		printVerdict(os.Stdout, status)
	}
	if closeErr != nil {
		fmt.Fprintf(os.Stderr, "driverpilot selftest: sensor: %v\n", closeErr)
		return exitError{code: 1}
	}
	if status.Result != v1alpha1.SelfTestPassed {
		return exitError{code: 1}
	}
	return nil
}

func isDriver(d v1alpha1.Driver) bool {
	for _, known := range v1alpha1.AllDrivers {
		if d == known {
			return true
		}
	}
	return false
}

// parseChecks turns "ExeUpperLayer,ExeCopyUp" into check names; empty means every check.
func parseChecks(s string) ([]v1alpha1.CheckName, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []v1alpha1.CheckName
	for _, part := range strings.Split(s, ",") {
		name := v1alpha1.CheckName(strings.TrimSpace(part))
		known := false
		for _, c := range v1alpha1.AllChecks {
			known = known || c == name
		}
		if !known {
			return nil, fmt.Errorf("unknown check %q (known: %s)", name, joinChecks(v1alpha1.AllChecks))
		}
		out = append(out, name)
	}
	return out, nil
}

func joinChecks(checks []v1alpha1.CheckName) string {
	names := make([]string, len(checks))
	for i, c := range checks {
		names[i] = string(c)
	}
	return strings.Join(names, ",")
}

// printVerdict prints the self-test as a table a person reads on the node.
func printVerdict(w io.Writer, st v1alpha1.SelfTestStatus) {
	took := ""
	if st.StartTime != nil && st.FinishTime != nil {
		took = " in " + st.FinishTime.Sub(st.StartTime.Time).Round(time.Millisecond).String()
	}
	fmt.Fprintf(w, "self-test with driver %s: %s (%s)%s\n", st.Driver, st.Result, st.Reason, took)
	if len(st.Checks) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CHECK\tRESULT\tEXPECTED\tOBSERVED\tLATENCY\tMETHOD")
		for _, c := range st.Checks {
			latency := "-"
			if c.Latency != nil {
				latency = c.Latency.Duration.Round(time.Microsecond).String()
			}
			method := c.Method
			if method == "" {
				method = "-"
			}
			observed := c.Observed
			if observed == "" {
				observed = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, c.Result, c.Expected, observed, latency, method)
		}
		tw.Flush()
		for _, c := range st.Checks {
			if c.Result != v1alpha1.SelfTestPassed && c.Message != "" {
				fmt.Fprintf(w, "%s: %s\n", c.Name, c.Message)
			}
		}
	}
	if st.Message != "" {
		fmt.Fprintln(w, st.Message)
	}
	if st.BootID != "" {
		fmt.Fprintf(w, "boot %s, agent %s\n", st.BootID, st.AgentVersion)
	}
}
