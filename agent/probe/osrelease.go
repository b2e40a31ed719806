package probe

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// ParseOSRelease parses os-release(5): KEY=value lines, values optionally in single or double
// quotes, backslash escapes inside double quotes, comments and blank lines ignored, blanks around the = tolerated as systemd does. Malformed
// lines are skipped, as systemd does.
func ParseOSRelease(s string) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" || strings.ContainsAny(key, " \t\"'") {
			continue
		}
		v, ok := unquote(strings.TrimSpace(val))
		if !ok {
			continue
		}
		out[key] = v
	}
	return out
}

func unquote(v string) (string, bool) {
	if v == "" {
		return "", true
	}
	switch q := v[0]; q {
	case '\'':
		if len(v) < 2 || v[len(v)-1] != q {
			return "", false
		}
		return v[1 : len(v)-1], true
	case '"':
		if len(v) < 2 || v[len(v)-1] != q {
			return "", false
		}
		var b strings.Builder
		in := v[1 : len(v)-1]
		for i := 0; i < len(in); i++ {
			if in[i] == '\\' && i+1 < len(in) {
				i++
			}
			b.WriteByte(in[i])
		}
		return b.String(), true
	}
	return v, true
}

func (p *Prober) distro() v1alpha1.DistroFacts {
	var errs []error
	for _, path := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		data, src, err := p.readFile(path)
		if err != nil {
			errs = append(errs, err)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			break
		}
		kv := ParseOSRelease(string(data))
		d := v1alpha1.DistroFacts{ID: kv["ID"], VersionID: kv["VERSION_ID"], PrettyName: kv["PRETTY_NAME"], Source: src}
		if d.ID == "" {
			// os-release(5): ID defaults to "linux" when unset.
			d.ID = "linux"
			d.Source += " (no ID: os-release default linux)"
		}
		return d
	}
	return v1alpha1.DistroFacts{Error: fmt.Sprintf("read os-release: %v", errors.Join(errs...))}
}
