// Package knownissues holds DriverPilot's matrix of known-broken kernel x driver x Falco version
// combinations (known-issues.yaml, embedded in the binary) and loads and validates that format,
// from the embedded file or from a file a user supplies.
//
// An entry is evaluated against a node's probe facts with three answers: it applies, it does not,
// or it may apply because a fact it needs is unknown. The selection engine excludes a driver for
// the first answer and ranks it lower for the third; it never treats an unknown fact as a match.
package knownissues

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
)

//go:embed known-issues.yaml
var embedded []byte

// ErrInvalid marks a known-issue file that does not validate.
var ErrInvalid = errors.New("invalid known-issue file")

// File is the document format.
type File struct {
	Issues []Issue `json:"issues"`
}

// Issue is one known-broken combination.
type Issue struct {
	ID        string                `json:"id"`
	Title     string                `json:"title"`
	Reference string                `json:"reference"`
	Drivers   []v1alpha1.Driver     `json:"drivers"`
	Sensors   []v1alpha1.SensorKind `json:"sensors,omitempty"`
	Falco     FalcoRange            `json:"falco,omitempty"`
	Match     Match                 `json:"match"`
	Effect    string                `json:"effect,omitempty"`

	kernelRE     *regexp.Regexp
	introduced   *kernelversion.Version
	fixed        *kernelversion.Version
	kernelRanges []versionRange
}

// FalcoRange bounds the affected Falco versions: introduced <= version < fixed.
type FalcoRange struct {
	Introduced string `json:"introduced,omitempty"`
	Fixed      string `json:"fixed,omitempty"`
}

// Match lists the node facts an issue needs; every field that is set must hold.
type Match struct {
	KernelRelease  string        `json:"kernelRelease,omitempty"`
	KernelVersions []KernelRange `json:"kernelVersions,omitempty"`
	Distro         []string      `json:"distro,omitempty"`
	DistroVersions []string      `json:"distroVersions,omitempty"`
	Architecture   []string      `json:"architecture,omitempty"`
	OverlayTypes   []string      `json:"overlayTypes,omitempty"`
}

// KernelRange is min <= kernel version < below; either bound may be empty.
type KernelRange struct {
	Min   string `json:"min,omitempty"`
	Below string `json:"below,omitempty"`
}

type versionRange struct{ min, below *kernelversion.Version }

// Default returns the embedded matrix. The embedded file is validated by the package's tests, so an
// error here means a broken build.
func Default() ([]Issue, error) {
	issues, err := Parse(embedded)
	if err != nil {
		return nil, fmt.Errorf("embedded known-issues.yaml: %w", err)
	}
	return issues, nil
}

// LoadFile reads and validates a user-supplied known-issue file.
func LoadFile(path string) ([]Issue, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read known issues: %w", err)
	}
	issues, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return issues, nil
}

// Parse decodes and validates a known-issue document. Unknown fields are errors, and every error
// names the entry (index and id) and the field.
func Parse(data []byte) ([]Issue, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("decode: %w: %w", ErrInvalid, err)
	}
	seen := map[string]int{}
	var errs []error
	for i := range f.Issues {
		is := &f.Issues[i]
		if err := is.compile(); err != nil {
			errs = append(errs, fmt.Errorf("issues[%d] (%s): %w: %w", i, is.ID, ErrInvalid, err))
			continue
		}
		if j, dup := seen[is.ID]; dup {
			errs = append(errs, fmt.Errorf("issues[%d] (%s): id: %w: duplicate of issues[%d]", i, is.ID, ErrInvalid, j))
		}
		seen[is.ID] = i
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return f.Issues, nil
}

var (
	idPattern     = regexp.MustCompile(`^[a-z0-9._-]+#[0-9]+$`)
	overlayValues = []string{v1alpha1.OverlayTypesVmlinux, v1alpha1.OverlayTypesModule, v1alpha1.OverlayTypesAbsent}
)

func (is *Issue) compile() error {
	if !idPattern.MatchString(is.ID) {
		return fmt.Errorf("id: %q is not of the form repo#number", is.ID)
	}
	if is.Title == "" {
		return errors.New("title: required")
	}
	if !strings.HasPrefix(is.Reference, "https://") {
		return fmt.Errorf("reference: %q is not an https link", is.Reference)
	}
	if len(is.Drivers) == 0 {
		return errors.New("drivers: at least one driver is required")
	}
	for _, d := range is.Drivers {
		if !slices.Contains(v1alpha1.AllDrivers, d) {
			return fmt.Errorf("drivers: unknown driver %q", d)
		}
	}
	if len(is.Sensors) == 0 {
		is.Sensors = []v1alpha1.SensorKind{v1alpha1.SensorFalco}
	}
	for _, s := range is.Sensors {
		if s != v1alpha1.SensorFalco && s != v1alpha1.SensorBuiltin {
			return fmt.Errorf("sensors: unknown sensor %q", s)
		}
	}
	var err error
	if is.introduced, err = optionalSemver(is.Falco.Introduced); err != nil {
		return fmt.Errorf("falco.introduced: %w", err)
	}
	if is.fixed, err = optionalSemver(is.Falco.Fixed); err != nil {
		return fmt.Errorf("falco.fixed: %w", err)
	}
	if is.introduced != nil && is.fixed != nil && !is.introduced.Less(*is.fixed) {
		return fmt.Errorf("falco: introduced %s is not before fixed %s", is.introduced, is.fixed)
	}
	m := is.Match
	if m.KernelRelease == "" && len(m.KernelVersions) == 0 && len(m.Distro) == 0 && len(m.DistroVersions) == 0 &&
		len(m.Architecture) == 0 && len(m.OverlayTypes) == 0 {
		return errors.New("match: set at least one field (an entry that matches every node is a rule, not an issue)")
	}
	if m.KernelRelease != "" {
		if is.kernelRE, err = regexp.Compile(m.KernelRelease); err != nil {
			return fmt.Errorf("match.kernelRelease: %w", err)
		}
	}
	is.kernelRanges = nil
	for j, r := range m.KernelVersions {
		var vr versionRange
		if vr.min, err = optionalRelease(r.Min); err != nil {
			return fmt.Errorf("match.kernelVersions[%d].min: %w", j, err)
		}
		if vr.below, err = optionalRelease(r.Below); err != nil {
			return fmt.Errorf("match.kernelVersions[%d].below: %w", j, err)
		}
		if vr.min == nil && vr.below == nil {
			return fmt.Errorf("match.kernelVersions[%d]: set min or below", j)
		}
		if vr.min != nil && vr.below != nil && !vr.min.Less(*vr.below) {
			return fmt.Errorf("match.kernelVersions[%d]: min %s is not below %s", j, vr.min, vr.below)
		}
		is.kernelRanges = append(is.kernelRanges, vr)
	}
	for _, a := range m.Architecture {
		if !slices.Contains([]string{"amd64", "arm64", "s390x", "ppc64le", "riscv64"}, a) {
			return fmt.Errorf("match.architecture: %q is not a GOARCH name", a)
		}
	}
	for _, o := range m.OverlayTypes {
		if !slices.Contains(overlayValues, o) {
			return fmt.Errorf("match.overlayTypes: %q is not one of %v", o, overlayValues)
		}
	}
	return nil
}

func optionalSemver(s string) (*kernelversion.Version, error) {
	if s == "" {
		return nil, nil
	}
	v, err := kernelversion.ParseSemver(s)
	return &v, err
}

func optionalRelease(s string) (*kernelversion.Version, error) {
	if s == "" {
		return nil, nil
	}
	v, err := kernelversion.ParseRelease(s)
	return &v, err
}

// Applicability is the three-valued answer of Evaluate.
type Applicability int

const (
	// DoesNotApply: a known fact rules the issue out.
	DoesNotApply Applicability = iota
	// Applies: every condition holds on known facts.
	Applies
	// MayApply: no known fact rules it out, but some condition rests on an unknown fact.
	MayApply
)

// Evaluation is the answer for one node, with the facts it rests on.
type Evaluation struct {
	Applicability Applicability
	// Matched lists the conditions that held, in words ("kernel 6.11.5 >= 6.11.4").
	Matched []string
	// Unknown lists the conditions that could not be evaluated.
	Unknown []string
}

// Evaluate answers whether the issue applies to a node with these facts, for this sensor. falco is
// the sensor's Falco version, nil when unknown.
func (is *Issue) Evaluate(f v1alpha1.ProbeFacts, sensor v1alpha1.SensorKind, falco *kernelversion.Version) Evaluation {
	var ev Evaluation
	if !slices.Contains(is.Sensors, sensor) {
		return ev
	}
	// cond records one condition; it returns false once a known fact rules the issue out.
	cond := func(known, holds bool, matched, unknown string) bool {
		switch {
		case !known:
			ev.Unknown = append(ev.Unknown, unknown)
		case holds:
			ev.Matched = append(ev.Matched, matched)
		default:
			return false
		}
		return true
	}
	if sensor == v1alpha1.SensorFalco && (is.introduced != nil || is.fixed != nil) {
		in := falco != nil && (is.introduced == nil || !falco.Less(*is.introduced)) && (is.fixed == nil || falco.Less(*is.fixed))
		desc := "Falco " + falcoString(falco) + " " + is.falcoRangeString()
		if !cond(falco != nil, in, desc, "Falco version unknown (affected: "+is.falcoRangeString()+")") {
			return Evaluation{}
		}
	}
	m := is.Match
	release := f.Kernel.Release.Value
	if is.kernelRE != nil {
		if !cond(release != "", release != "" && is.kernelRE.MatchString(release),
			fmt.Sprintf("kernel release %s matches %s", release, m.KernelRelease), "kernel release unknown") {
			return Evaluation{}
		}
	}
	if len(is.kernelRanges) > 0 {
		kv, err := kernelversion.ParseRelease(f.Kernel.Version.Value)
		if err != nil && release != "" {
			kv, err = kernelversion.ParseRelease(release)
		}
		hit := ""
		for i, r := range is.kernelRanges {
			if err == nil && (r.min == nil || !kv.Less(*r.min)) && (r.below == nil || kv.Less(*r.below)) {
				hit = fmt.Sprintf("kernel %s in %s", kv, describeRange(m.KernelVersions[i]))
				break
			}
		}
		if !cond(err == nil, hit != "", hit, "kernel version unknown") {
			return Evaluation{}
		}
	}
	if len(m.Distro) > 0 {
		id := f.Distro.ID
		if !cond(id != "", slices.Contains(m.Distro, id), "distro "+id, "distro unknown") {
			return Evaluation{}
		}
	}
	if len(m.DistroVersions) > 0 {
		v := f.Distro.VersionID
		if !cond(v != "", slices.Contains(m.DistroVersions, v), "distro version "+v, "distro version unknown") {
			return Evaluation{}
		}
	}
	if len(m.Architecture) > 0 {
		a := f.Kernel.Architecture.Value
		if !cond(a != "", slices.Contains(m.Architecture, a), "architecture "+a, "architecture unknown") {
			return Evaluation{}
		}
	}
	if len(m.OverlayTypes) > 0 {
		o := f.BTF.OverlayTypes.Value
		if !cond(o != "", slices.Contains(m.OverlayTypes, o), "overlay types "+o, "overlay BTF types unknown") {
			return Evaluation{}
		}
	}
	if len(ev.Unknown) > 0 {
		ev.Applicability = MayApply
	} else {
		ev.Applicability = Applies
	}
	return ev
}

func (is *Issue) falcoRangeString() string {
	switch {
	case is.introduced != nil && is.fixed != nil:
		return fmt.Sprintf(">= %s, < %s", is.introduced, is.fixed)
	case is.fixed != nil:
		return "< " + is.fixed.String()
	default:
		return ">= " + is.introduced.String()
	}
}

func falcoString(v *kernelversion.Version) string {
	if v == nil {
		return "unknown"
	}
	return v.String()
}

func describeRange(r KernelRange) string {
	switch {
	case r.Min != "" && r.Below != "":
		return "[" + r.Min + ", " + r.Below + ")"
	case r.Min != "":
		return ">= " + r.Min
	default:
		return "< " + r.Below
	}
}
