package selection

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/internal/kernelversion"
)

// ErrInvalidPolicy marks a driver policy the API server could not reject (a bad regexp, for
// instance); the manager reports it as Ready=False, reason InvalidSpec.
var ErrInvalidPolicy = errors.New("invalid driver policy")

// rcSuffix finds a release-candidate tag such as 0.44.0-rc1.
var rcSuffix = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+-(rc[0-9]+)`)

// DefaultPreference is the CRD's default drivers.preference.
var DefaultPreference = []v1alpha1.Driver{v1alpha1.DriverModernEBPF, v1alpha1.DriverEBPF, v1alpha1.DriverKmod}

// falcoWithoutEBPF is the first Falco release without the legacy ebpf driver.
var falcoWithoutEBPF = kernelversion.Version{Major: 0, Minor: 44}

// maxReasons is NodeSensorSpec.reasons' MaxItems.
const maxReasons = 16

// Input is everything a decision rests on.
type Input struct {
	Facts  v1alpha1.ProbeFacts
	Policy v1alpha1.DriverPolicy
	// Sensor is the profile's sensor. For Falco, FalcoVersion (or the image tag) gives the version.
	Sensor         v1alpha1.SensorSpec
	KnownIssues    []knownissues.Issue
	FailedAttempts []v1alpha1.FailedAttempt
}

// Decision is the ordered list of eligible drivers and why every other one was skipped.
type Decision struct {
	// Driver is the first candidate, empty when no driver is left.
	Driver v1alpha1.Driver `json:"driver,omitempty"`
	// Candidates are the eligible drivers, best first.
	Candidates []v1alpha1.Driver `json:"candidates"`
	// Unsure are the candidates ranked lower for a doubt (an unknown fact, a known issue that may
	// apply); they follow the others.
	Unsure []v1alpha1.Driver `json:"unsure,omitempty"`
	// Reasons explain each skipped driver, and each candidate ranked lower for an unknown fact.
	Reasons []v1alpha1.DriverReason `json:"reasons"`
	// Override is the index of the override that set the preference, -1 for the profile's own.
	Override int `json:"override"`
	// Preference is the effective preference list.
	Preference []v1alpha1.Driver `json:"preference"`
	// FalcoVersion is the Falco version the decision used, empty for Builtin or when unknown.
	FalcoVersion string `json:"falcoVersion,omitempty"`
	// Notes are remarks that concern no single driver (an override skipped for an unknown fact).
	Notes []string `json:"notes,omitempty"`
}

// ValidatePolicy checks what the CRD's schema cannot: known and unique drivers, overrides that
// match on something, and kernelRelease expressions that compile. Errors name the field.
func ValidatePolicy(p v1alpha1.DriverPolicy) error {
	var errs []error
	checkPref := func(field string, pref []v1alpha1.Driver, required bool) {
		if len(pref) == 0 && required {
			errs = append(errs, fmt.Errorf("%s: at least one driver is required", field))
		}
		for i, d := range pref {
			if !slices.Contains(v1alpha1.AllDrivers, d) {
				errs = append(errs, fmt.Errorf("%s[%d]: unknown driver %q", field, i, d))
			} else if slices.Index(pref, d) != i {
				errs = append(errs, fmt.Errorf("%s[%d]: duplicate driver %q", field, i, d))
			}
		}
	}
	checkPref("drivers.preference", p.Preference, false)
	for i, o := range p.Overrides {
		field := fmt.Sprintf("drivers.overrides[%d]", i)
		checkPref(field+".preference", o.Preference, true)
		m := o.Match
		if m.KernelRelease == "" && len(m.Distro) == 0 && len(m.CloudProvider) == 0 && len(m.Architecture) == 0 {
			errs = append(errs, fmt.Errorf("%s.match: set at least one of kernelRelease, distro, cloudProvider, architecture", field))
		}
		if m.KernelRelease != "" {
			if _, err := compileRelease(m.KernelRelease); err != nil {
				errs = append(errs, fmt.Errorf("%s.match.kernelRelease: %w", field, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	return nil
}

// FalcoVersion returns the sensor's Falco version: falcoVersion, else the image tag
// (falcosecurity/falco:0.38.2-debian -> 0.38.2). ok is false when neither gives one.
func FalcoVersion(s v1alpha1.SensorSpec) (kernelversion.Version, bool) {
	if s.FalcoVersion != "" {
		v, err := kernelversion.ParseSemver(s.FalcoVersion)
		return v, err == nil
	}
	img := s.Image
	if i := strings.IndexByte(img, '@'); i >= 0 {
		img = img[:i]
	}
	i := strings.LastIndexByte(img, ':')
	if i < 0 || strings.Contains(img[i:], "/") {
		return kernelversion.Version{}, false
	}
	tag := strings.TrimPrefix(img[i+1:], "v")
	// Image flavours append a suffix to the version (0.39.2-debian): keep major.minor.patch, and a
	// release-candidate suffix, which really is a pre-release.
	v, err := kernelversion.ParseRelease(tag)
	if err != nil || strings.Count(tag, ".") < 2 {
		return kernelversion.Version{}, false
	}
	if m := rcSuffix.FindStringSubmatch(tag); m != nil {
		v.Pre = m[1]
	}
	return v, true
}

// Decide computes the decision. It fails only for an invalid policy (ErrInvalidPolicy).
func Decide(in Input) (Decision, error) {
	if err := ValidatePolicy(in.Policy); err != nil {
		return Decision{}, err
	}
	d := Decision{Override: -1, Candidates: []v1alpha1.Driver{}, Reasons: []v1alpha1.DriverReason{}}
	d.Preference = in.Policy.Preference
	if len(d.Preference) == 0 {
		d.Preference = DefaultPreference
	}
	for i, o := range in.Policy.Overrides {
		matched, unknown := overrideMatches(o.Match, in.Facts)
		if matched {
			d.Override, d.Preference = i, o.Preference
			break
		}
		if unknown != "" {
			d.Notes = append(d.Notes, fmt.Sprintf("override %d not applied: %s unknown, so the match cannot be proven", i, unknown))
		}
	}

	kind := in.Sensor.Kind
	if kind == "" {
		kind = v1alpha1.SensorBuiltin
	}
	var falco *kernelversion.Version
	if kind == v1alpha1.SensorFalco {
		if v, ok := FalcoVersion(in.Sensor); ok {
			falco = &v
			d.FalcoVersion = v.String()
		} else {
			d.Notes = append(d.Notes, "Falco version unknown (no falcoVersion and no version tag on the image): Falco-version-bound rules and known issues are treated as possibly applying")
		}
	}

	var sure, unsure []v1alpha1.Driver
	perDriver := map[v1alpha1.Driver][]v1alpha1.DriverReason{}
	for _, drv := range v1alpha1.AllDrivers {
		if !slices.Contains(d.Preference, drv) {
			perDriver[drv] = []v1alpha1.DriverReason{notPreferred(drv, d.Override)}
			continue
		}
		if r, ok := sensorReason(drv, kind, falco); ok {
			perDriver[drv] = []v1alpha1.DriverReason{r}
			continue
		}
		ev := evaluate(drv, in.Facts, kind, falco, in.KnownIssues, in.FailedAttempts)
		perDriver[drv] = ev.reasons
		switch {
		case ev.excluded:
		case ev.uncertain:
			unsure = append(unsure, drv)
		default:
			sure = append(sure, drv)
		}
	}
	// Candidates follow the preference order, drivers with a doubt after those without.
	for _, group := range [][]v1alpha1.Driver{sure, unsure} {
		for _, drv := range d.Preference {
			if slices.Contains(group, drv) {
				d.Candidates = append(d.Candidates, drv)
			}
		}
	}
	if len(d.Candidates) > 0 {
		d.Driver = d.Candidates[0]
	}
	for _, drv := range d.Preference {
		if slices.Contains(unsure, drv) {
			d.Unsure = append(d.Unsure, drv)
		}
	}
	d.Reasons = capReasons(perDriver)
	return d, nil
}

// capReasons flattens the reasons in driver order within maxReasons, keeping every driver's first.
func capReasons(perDriver map[v1alpha1.Driver][]v1alpha1.DriverReason) []v1alpha1.DriverReason {
	out := []v1alpha1.DriverReason{}
	budget := maxReasons
	for _, drv := range v1alpha1.AllDrivers {
		if len(perDriver[drv]) > 0 {
			budget--
		}
	}
	for _, drv := range v1alpha1.AllDrivers {
		rs := perDriver[drv]
		for i, r := range rs {
			if i == 0 || budget > 0 {
				if i > 0 {
					budget--
				}
				out = append(out, r)
			}
		}
	}
	return out
}

func notPreferred(drv v1alpha1.Driver, override int) v1alpha1.DriverReason {
	if override >= 0 {
		return v1alpha1.DriverReason{Driver: drv, Source: v1alpha1.ReasonSourceOverride, Rule: "not-in-override-preference",
			Message: fmt.Sprintf("%s is not in the preference of drivers.overrides[%d], the first override matching this node", drv, override)}
	}
	return v1alpha1.DriverReason{Driver: drv, Source: v1alpha1.ReasonSourceProfile, Rule: "not-in-preference",
		Message: fmt.Sprintf("%s is not in the profile's drivers.preference", drv)}
}

func sensorReason(drv v1alpha1.Driver, kind v1alpha1.SensorKind, falco *kernelversion.Version) (v1alpha1.DriverReason, bool) {
	switch {
	case kind == v1alpha1.SensorBuiltin && drv == v1alpha1.DriverKmod:
		return v1alpha1.DriverReason{Driver: drv, Source: v1alpha1.ReasonSourceSensor, Rule: "builtin-sensor-no-kmod",
			Message: "the Builtin sensor offers only modern_ebpf and ebpf; it has no kernel module"}, true
	case kind == v1alpha1.SensorFalco && drv == v1alpha1.DriverEBPF && falco != nil && !falco.Less(falcoWithoutEBPF):
		return v1alpha1.DriverReason{Driver: drv, Source: v1alpha1.ReasonSourceSensor, Rule: "falco-0.44-removed-ebpf",
			Message:   fmt.Sprintf("Falco %s has no legacy ebpf driver: deprecated in 0.43, removed in 0.44.0", falco),
			Reference: "https://github.com/falcosecurity/falco/releases/tag/0.44.0"}, true
	}
	return v1alpha1.DriverReason{}, false
}

// releasePatterns memoizes compiled kernelRelease expressions: the manager decides for every
// node of a profile with the same few patterns, and validates them before each decision.
var releasePatterns sync.Map // pattern -> compiled

type compiled struct {
	re  *regexp.Regexp
	err error
}

func compileRelease(pattern string) (*regexp.Regexp, error) {
	if c, ok := releasePatterns.Load(pattern); ok {
		return c.(compiled).re, c.(compiled).err
	}
	re, err := regexp.Compile(pattern)
	releasePatterns.Store(pattern, compiled{re, err})
	return re, err
}

// overrideMatches says whether every set field of m holds on known facts; unknown names the fact
// that prevented a match when one did.
func overrideMatches(m v1alpha1.OverrideMatch, f v1alpha1.ProbeFacts) (bool, string) {
	check := func(value string, ok func(string) bool, name string) (bool, string) {
		if value == "" {
			return false, name
		}
		return ok(value), ""
	}
	type cond struct {
		set   bool
		value string
		ok    func(string) bool
		name  string
	}
	conds := []cond{
		{m.KernelRelease != "", f.Kernel.Release.Value, func(s string) bool {
			re, err := compileRelease(m.KernelRelease)
			return err == nil && re.MatchString(s)
		}, "kernel release"},
		{len(m.Distro) > 0, f.Distro.ID, func(s string) bool { return slices.Contains(m.Distro, s) }, "distro"},
		{len(m.CloudProvider) > 0, f.Cloud.Value, func(s string) bool { return slices.Contains(m.CloudProvider, s) }, "cloud provider"},
		{len(m.Architecture) > 0, f.Kernel.Architecture.Value, func(s string) bool { return slices.Contains(m.Architecture, s) }, "architecture"},
	}
	unknown := ""
	for _, c := range conds {
		if !c.set {
			continue
		}
		ok, unk := check(c.value, c.ok, c.name)
		if unk != "" {
			unknown = unk
			continue
		}
		if !ok {
			return false, ""
		}
	}
	return unknown == "", unknown
}
