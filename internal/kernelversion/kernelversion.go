// Package kernelversion parses the numeric version out of a kernel release string, whatever suffix
// the distribution appends (5.10.219-208.866.amzn2.x86_64, 5.15.154+, 6.6.30-talos), and parses
// the strict x.y.z versions of user-space software such as Falco.
package kernelversion

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrInvalid marks a string that holds no version.
var ErrInvalid = errors.New("invalid version")

// maxComponent bounds each number so hostile input cannot overflow comparisons.
const maxComponent = 1 << 24

// Version is major.minor.patch with an optional pre-release tag (semver ordering: 1.2.3-rc1 < 1.2.3).
type Version struct {
	Major, Minor, Patch int
	// Pre is the pre-release tag without its dash (rc1), empty for a release.
	Pre string
}

// String prints major.minor.patch, followed by -pre when set.
func (v Version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	return s
}

// Compare returns -1, 0 or +1. A pre-release sorts before the release it precedes; two
// pre-releases of the same version compare as strings (good enough for rc1 < rc2).
func (v Version) Compare(o Version) int {
	for _, d := range [3]int{v.Major - o.Major, v.Minor - o.Minor, v.Patch - o.Patch} {
		if d < 0 {
			return -1
		}
		if d > 0 {
			return 1
		}
	}
	switch {
	case v.Pre == o.Pre:
		return 0
	case v.Pre == "":
		return 1
	case o.Pre == "":
		return -1
	default:
		return strings.Compare(v.Pre, o.Pre)
	}
}

// Less reports whether v sorts before o.
func (v Version) Less(o Version) bool { return v.Compare(o) < 0 }

// ParseRelease reads the leading major.minor[.patch] of a kernel release. Whatever follows the
// numbers must start with a separator (-, +, _, ., ~) so that "5.10abc" is rejected rather than
// misread. A missing patch level reads as 0.
func ParseRelease(release string) (Version, error) {
	nums, rest, err := leadingNumbers(release)
	if err != nil {
		return Version{}, fmt.Errorf("kernel release %q: %w", release, err)
	}
	if len(nums) < 2 {
		return Version{}, fmt.Errorf("kernel release %q: need major.minor: %w", release, ErrInvalid)
	}
	if rest != "" && !strings.ContainsRune("-+_.~", rune(rest[0])) {
		return Version{}, fmt.Errorf("kernel release %q: unexpected %q after the version: %w", release, rest[:1], ErrInvalid)
	}
	v := Version{Major: nums[0], Minor: nums[1]}
	if len(nums) > 2 {
		v.Patch = nums[2]
	}
	return v, nil
}

// ParseSemver parses a strict [v]major.minor.patch[-pre][+build] version such as a Falco version
// (0.38.2, v0.39.0-rc1). Build metadata is ignored.
func ParseSemver(s string) (Version, error) {
	in := strings.TrimPrefix(s, "v")
	if i := strings.IndexByte(in, '+'); i >= 0 {
		in = in[:i]
	}
	var pre string
	if i := strings.IndexByte(in, '-'); i >= 0 {
		in, pre = in[:i], in[i+1:]
		if pre == "" {
			return Version{}, fmt.Errorf("version %q: empty pre-release: %w", s, ErrInvalid)
		}
	}
	nums, rest, err := leadingNumbers(in)
	if err != nil || rest != "" || len(nums) != 3 {
		return Version{}, fmt.Errorf("version %q: want major.minor.patch: %w", s, ErrInvalid)
	}
	return Version{Major: nums[0], Minor: nums[1], Patch: nums[2], Pre: pre}, nil
}

// leadingNumbers reads up to three dot-separated decimal numbers and returns the unread rest.
func leadingNumbers(s string) ([]int, string, error) {
	var nums []int
	rest := s
	for len(nums) < 3 {
		end := 0
		for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
			end++
		}
		if end == 0 {
			if len(nums) == 0 {
				return nil, s, fmt.Errorf("no leading number: %w", ErrInvalid)
			}
			// "5.10.x": the dot belonged to the suffix, give it back.
			rest = "." + rest
			break
		}
		n, err := strconv.Atoi(rest[:end])
		if err != nil || n > maxComponent {
			return nil, s, fmt.Errorf("number %q out of range: %w", rest[:end], ErrInvalid)
		}
		nums = append(nums, n)
		rest = rest[end:]
		if len(nums) == 3 || !strings.HasPrefix(rest, ".") {
			break
		}
		rest = rest[1:]
	}
	return nums, rest, nil
}
