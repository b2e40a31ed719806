package knownissues

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
)

// FleetReference is the reference an exported fleet verdict carries unless the user names one
// (an upstream issue, when they report it): the README section on what a fleet learns.
const FleetReference = "https://github.com/driverpilot/driverpilot#what-a-fleet-learns"

// FromFleet turns a profile's fleet matrix into known-issue entries: one per group and driver
// whose verdict is Fails. Each entry matches exactly the group's kernel release, architecture
// and distro, and the sensor it failed with (a Falco version pins falco: [version, next patch));
// its id is fleet-<profile>#<n>. Load the result with LoadFile (the manager's --known-issues) to
// pin what the fleet learned, so it holds whatever happens to the NodeSensors.
func FromFleet(profile string, groups []v1alpha1.FleetGroup, reference string) (File, error) {
	if reference == "" {
		reference = FleetReference
	}
	sorted := slices.Clone(groups)
	slices.SortFunc(sorted, func(a, b v1alpha1.FleetGroup) int { return strings.Compare(a.Name, b.Name) })
	var f File
	for _, g := range sorted {
		if g.Spec.Profile != profile {
			continue
		}
		for _, cell := range g.Status.Drivers {
			if cell.Verdict != v1alpha1.FleetFails {
				continue
			}
			is, err := fleetIssue(g, cell, reference)
			if err != nil {
				return File{}, fmt.Errorf("fleet group %s, driver %s: %w", g.Name, cell.Driver, err)
			}
			is.ID = fmt.Sprintf("fleet-%s#%d", profile, len(f.Issues)+1)
			f.Issues = append(f.Issues, is)
		}
	}
	return f, nil
}

func fleetIssue(g v1alpha1.FleetGroup, cell v1alpha1.FleetDriverStatus, reference string) (Issue, error) {
	s := g.Spec
	is := Issue{
		Title:     fmt.Sprintf("%s fails its self-test on kernel %s (%s, %s) with %s", cell.Driver, s.KernelRelease, s.Architecture, s.Distro, s.Sensor),
		Reference: reference,
		Drivers:   []v1alpha1.Driver{cell.Driver},
		Match:     Match{KernelRelease: "^" + regexp.QuoteMeta(s.KernelRelease) + "$"},
		Effect: fmt.Sprintf("learned by profile %s: failed for a reason of the kernel on %d of %d nodes (first %s): %s",
			s.Profile, cell.Failed, g.Status.Nodes, cell.LearnedFrom, cell.Reason),
	}
	if s.Architecture != "" {
		is.Match.Architecture = []string{s.Architecture}
	}
	if id, version, _ := strings.Cut(s.Distro, " "); id != "" {
		is.Match.Distro = []string{id}
		if version != "" {
			is.Match.DistroVersions = []string{version}
		}
	}
	kind, version, _ := strings.Cut(s.Sensor, " ")
	switch v1alpha1.SensorKind(kind) {
	case v1alpha1.SensorFalco:
		is.Sensors = []v1alpha1.SensorKind{v1alpha1.SensorFalco}
		if v, err := kernelversion.ParseSemver(version); err == nil && v.Pre == "" {
			next := v
			next.Patch++
			is.Falco = FalcoRange{Introduced: v.String(), Fixed: next.String()}
		} else {
			is.Effect += " (Falco version unknown: the entry covers every version)"
		}
	case v1alpha1.SensorBuiltin:
		// The format has no Builtin version: the entry covers every agent version.
		is.Sensors = []v1alpha1.SensorKind{v1alpha1.SensorBuiltin}
		is.Effect += fmt.Sprintf(" (seen with %s; the entry covers every Builtin version)", s.Sensor)
	default:
		return Issue{}, fmt.Errorf("sensor %q: not Falco or Builtin", s.Sensor)
	}
	return is, nil
}

// Marshal writes a known-issue document with a header that says where it came from.
func Marshal(f File, header string) ([]byte, error) {
	body, err := yaml.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("encode known issues: %w", err)
	}
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(header, "\n"), "\n") {
		b.WriteString("# " + line + "\n")
	}
	b.Write(body)
	return []byte(b.String()), nil
}
