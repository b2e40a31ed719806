package kernelversion

import (
	"errors"
	"testing"
)

func TestParseRelease(t *testing.T) {
	for _, tc := range []struct {
		release string
		want    string
	}{
		{"5.10.219-208.866.amzn2.x86_64", "5.10.219"},
		{"6.1.0-56-cloud-amd64", "6.1.0"},
		{"5.15.0-1052-azure", "5.15.0"},
		{"4.18.0-553.el8_10.x86_64", "4.18.0"},
		{"5.15.154+", "5.15.154"},
		{"6.6.30-talos", "6.6.30"},
		{"5.14.0-427.13.1.el9_4.x86_64", "5.14.0"},
		{"6.18.44-fc-v657", "6.18.44"},
		{"6.1.94-99.176.amzn2023.x86_64", "6.1.94"},
		{"5.15.0-1064-aws", "5.15.0"},
		{"6.8", "6.8.0"},
		{"6.8-rc3", "6.8.0"},
		{"5.4.17-2136.322.6.2.el7uek.x86_64", "5.4.17"},
	} {
		got, err := ParseRelease(tc.release)
		if err != nil {
			t.Errorf("ParseRelease(%q): %v", tc.release, err)
			continue
		}
		if got.String() != tc.want {
			t.Errorf("ParseRelease(%q) = %s, want %s", tc.release, got, tc.want)
		}
	}
}

func TestParseReleaseRejects(t *testing.T) {
	for _, s := range []string{"", "linux", "6", "6.", "5.10abc", "99999999999.1.1", "-5.10"} {
		if v, err := ParseRelease(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseRelease(%q) = %v, %v; want ErrInvalid", s, v, err)
		}
	}
}

func TestParseSemverAndCompare(t *testing.T) {
	ordered := []string{"0.35.1", "0.36.0", "0.38.2-rc1", "0.38.2", "v0.38.3", "0.39.2+build.7", "0.44.0", "1.0.0"}
	var prev Version
	for i, s := range ordered {
		v, err := ParseSemver(s)
		if err != nil {
			t.Fatalf("ParseSemver(%q): %v", s, err)
		}
		if i > 0 && !prev.Less(v) {
			t.Errorf("%s should sort before %s", prev, v)
		}
		if v.Compare(v) != 0 {
			t.Errorf("%s does not equal itself", v)
		}
		prev = v
	}
	for _, s := range []string{"", "0.38", "0.38.2.1", "x.y.z", "0.38.2-", "0.38.2foo"} {
		if _, err := ParseSemver(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSemver(%q) = %v, want ErrInvalid", s, err)
		}
	}
}

func FuzzParseRelease(f *testing.F) {
	for _, s := range []string{"5.10.219-208.866.amzn2.x86_64", "5.15.154+", "6.6.30-talos", "", "1.2.3.4.5", "9999999999999999999.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseRelease(s)
		if err != nil {
			return
		}
		// A parsed release must parse back from its own string.
		again, err := ParseRelease(v.String())
		if err != nil || again.Compare(v) != 0 {
			t.Fatalf("ParseRelease(%q) = %s, reparse = %s, %v", s, v, again, err)
		}
	})
}

func FuzzParseSemver(f *testing.F) {
	for _, s := range []string{"0.38.2", "v0.39.0-rc1", "1.2.3+x", "-", "v"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSemver(s)
		if err == nil && v.Compare(v) != 0 {
			t.Fatalf("%q not equal to itself", s)
		}
	})
}
