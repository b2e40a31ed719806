package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/driverpilot/driverpilot/agent/probe"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/internal/selection"
)

// probeOutput has the shape of NodeSensor.status.probe plus the decision the manager would make.
type probeOutput struct {
	Probe    v1alpha1.ProbeFacts `json:"probe"`
	Decision selection.Decision  `json:"decision"`
	// Sensor is the sensor the decision was made for, after defaults.
	Sensor v1alpha1.SensorSpec `json:"sensor"`
	// KnownIssues names the known-issue matrix used.
	KnownIssues string `json:"knownIssues"`
	// Drivers says, for every driver, what the decision made of it and why.
	Drivers []driverVerdict `json:"drivers"`
}

// driverVerdict is one driver's place in the decision: chosen, a fallback, or skipped.
type driverVerdict struct {
	Driver  v1alpha1.Driver `json:"driver"`
	Verdict string          `json:"verdict"`
	Why     []string        `json:"why"`
}

// explain gives every driver a verdict with its reasons, so no driver goes unexplained.
func explain(d selection.Decision) []driverVerdict {
	out := make([]driverVerdict, 0, len(v1alpha1.AllDrivers))
	for _, drv := range v1alpha1.AllDrivers {
		v := driverVerdict{Driver: drv, Verdict: "skipped"}
		if i := slices.Index(d.Candidates, drv); i == 0 {
			v.Verdict = "chosen"
			v.Why = append(v.Why, fmt.Sprintf("first eligible driver of the preference %v", d.Preference))
		} else if i > 0 {
			v.Verdict = "fallback"
			v.Why = append(v.Why, fmt.Sprintf("eligible; tried if the self-test of %v fails", d.Candidates[:i]))
		}
		for _, r := range d.Reasons {
			if r.Driver == drv {
				v.Why = append(v.Why, fmt.Sprintf("%s (%s %s)", r.Message, r.Source, r.Rule))
			}
		}
		out = append(out, v)
	}
	return out
}

// runProbe prints this machine's facts and the driver decision for a profile.
func runProbe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	output := fs.String("o", "json", "output format: json or yaml")
	profilePath := fs.String("profile", "", "SecurityProfile YAML to decide for (default: the CRD defaults, Builtin sensor)")
	root := fs.String("root", "/", "directory the host's / is visible at (/host in a pod)")
	falcoVersion := fs.String("falco-version", "", "decide for a Falco sensor of this version (sets sensor.kind=Falco)")
	issuesPath := fs.String("known-issues", "", "known-issue file replacing the embedded matrix")
	providerID := fs.String("provider-id", "", "node.spec.providerID, for the cloud provider")
	labels := fs.String("node-labels", "", "node labels as k=v,k=v, for the cloud provider")
	mountSecurityfs := fs.Bool("mount-securityfs", os.Geteuid() == 0, "mount securityfs for the lockdown mode when it is not mounted, and unmount it after (default when root)")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 || (*output != "json" && *output != "yaml") {
		fmt.Fprintf(os.Stderr, "driverpilot probe: -o must be json or yaml and no arguments are taken\n")
		fs.Usage()
		return errUsage
	}
	if *falcoVersion != "" {
		if _, err := selectionFalco(*falcoVersion); err != nil {
			fmt.Fprintf(os.Stderr, "driverpilot probe: --falco-version: %v\n", err)
			return errUsage
		}
	}

	spec, err := loadProfile(*profilePath)
	if err != nil {
		return err
	}
	if *falcoVersion != "" {
		spec.Sensor.Kind, spec.Sensor.FalcoVersion = v1alpha1.SensorFalco, *falcoVersion
	}
	issues, source, err := loadIssues(*issuesPath)
	if err != nil {
		return err
	}
	in := probe.Inputs{ProviderID: *providerID, Labels: parseLabels(*labels)}

	// The live probe raises RLIMIT_MEMLOCK itself where the kernel charges BPF memory to it
	// (before 5.11), before its load probes, and reports when it cannot (ebpf.memlock).
	p := probe.New(*root)
	if *mountSecurityfs {
		// A tree without securityfs (older or minimal kernels) is a fact, not a failure: the
		// probe records lockdown as unknown, as the agent does.
		if unmount, err := probe.MountSecurityFS(*root); err != nil {
			fmt.Fprintf(os.Stderr, "driverpilot probe: securityfs not mounted (%v); lockdown is recorded as unknown\n", err)
		} else {
			defer unmount()
		}
	}
	facts := p.Probe(context.Background(), in)
	decision, err := selection.Decide(selection.Input{Facts: facts, Policy: spec.Drivers, Sensor: spec.Sensor, KnownIssues: issues})
	if err != nil {
		return err
	}
	out := probeOutput{Probe: facts, Decision: decision, Sensor: spec.Sensor, KnownIssues: source, Drivers: explain(decision)}
	return write(os.Stdout, *output, out)
}

func selectionFalco(v string) (string, error) {
	if _, ok := selection.FalcoVersion(v1alpha1.SensorSpec{FalcoVersion: v}); !ok {
		return "", fmt.Errorf("%q is not a version like 0.38.2", v)
	}
	return v, nil
}

// loadProfile reads a SecurityProfile and applies the defaults the CRD applies.
func loadProfile(path string) (v1alpha1.SecurityProfileSpec, error) {
	var prof v1alpha1.SecurityProfile
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return prof.Spec, fmt.Errorf("read profile: %w", err)
		}
		if err := yaml.UnmarshalStrict(data, &prof); err != nil {
			return prof.Spec, fmt.Errorf("parse profile %s: %w", path, err)
		}
		if prof.Kind != "" && prof.Kind != "SecurityProfile" {
			return prof.Spec, fmt.Errorf("profile %s: kind %q, want SecurityProfile", path, prof.Kind)
		}
	}
	if prof.Spec.Sensor.Kind == "" {
		prof.Spec.Sensor.Kind = v1alpha1.SensorBuiltin
	}
	if len(prof.Spec.Drivers.Preference) == 0 {
		prof.Spec.Drivers.Preference = append([]v1alpha1.Driver(nil), selection.DefaultPreference...)
	}
	if err := selection.ValidatePolicy(prof.Spec.Drivers); err != nil {
		return prof.Spec, fmt.Errorf("profile %s: %w", path, err)
	}
	return prof.Spec, nil
}

func loadIssues(path string) ([]knownissues.Issue, string, error) {
	if path == "" {
		issues, err := knownissues.Default()
		return issues, "embedded", err
	}
	issues, err := knownissues.LoadFile(path)
	return issues, path, err
}

func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok && k != "" {
			out[k] = v
		}
	}
	return out
}

func write(w io.Writer, format string, v any) error {
	if format == "yaml" {
		data, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode yaml: %w", err)
		}
		_, err = w.Write(data)
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
