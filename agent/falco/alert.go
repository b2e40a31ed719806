package falco

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// Alert is one alert as Falco writes it with json_output (and, for output, with
// json_include_output_property). Values of output_fields are strings, numbers, booleans or null.
type Alert struct {
	Time         string         `json:"time"`
	Rule         string         `json:"rule"`
	Priority     string         `json:"priority"`
	Output       string         `json:"output"`
	Source       string         `json:"source"`
	Hostname     string         `json:"hostname"`
	Tags         []string       `json:"tags"`
	OutputFields map[string]any `json:"output_fields"`
}

// Why an alert was not turned into an event.
var (
	// ErrOtherRule: an alert of a rule the self-test does not read.
	ErrOtherRule = errors.New("alert of another rule")
	// ErrPartial: an alert of a rule the self-test reads, without the fields it needs.
	ErrPartial = errors.New("partial alert")
)

// Fields the rules print in their output, for alerts whose output_fields are missing.
var outputField = map[string]*regexp.Regexp{
	"proc.exepath":            regexp.MustCompile(`\bproc_exepath=(\S+)`),
	"evt.arg.flags":           regexp.MustCompile(`\bexe_flags=(\S+)`),
	"proc.name":               regexp.MustCompile(`\bprocess=(\S+)`),
	"proc.pid":                regexp.MustCompile(`\bproc_pid=(\d+)`),
	"proc.is_exe_upper_layer": regexp.MustCompile(`\bis_exe_upper_layer=(\S+)`),
	"proc.is_exe_from_memfd":  regexp.MustCompile(`\bis_exe_from_memfd=(\S+)`),
}

// field returns an output field as text: from output_fields, else from the output line.
func (a *Alert) field(name string) (string, bool) {
	if v, ok := a.OutputFields[name]; ok && v != nil {
		var s string
		switch x := v.(type) {
		case string:
			s = x
		case json.Number:
			s = x.String()
		case float64:
			s = strconv.FormatFloat(x, 'f', -1, 64)
		case bool:
			s = strconv.FormatBool(x)
		default:
			s = fmt.Sprint(x)
		}
		// Falco prints <NA> for a field it could not compute.
		if s != "" && s != "<NA>" {
			return s, true
		}
	}
	if re := outputField[name]; re != nil {
		if m := re.FindStringSubmatch(a.Output); m != nil && m[1] != "<NA>" {
			return strings.TrimRight(m[1], ")"), true
		}
	}
	return "", false
}

// Event turns an alert of DropAndExecuteRule or ProbeRule into the exec event the self-test
// matches. received is when it arrived; driver is the driver Falco was configured with.
func (a *Alert) Event(received time.Time, driver v1alpha1.Driver) (sensor.Event, error) {
	if a.Rule != DropAndExecuteRule && a.Rule != ProbeRule {
		return sensor.Event{}, fmt.Errorf("%w: %q", ErrOtherRule, a.Rule)
	}
	ev := sensor.Event{Received: received, Driver: driver, Time: received}
	exe, ok := a.field("proc.exepath")
	if !ok {
		return sensor.Event{}, fmt.Errorf("%w: rule %q without proc.exepath", ErrPartial, a.Rule)
	}
	// A deleted executable (a memfd) may carry the kernel's suffix.
	ev.Filename = path.Base(strings.TrimSuffix(exe, " (deleted)"))
	ev.Comm, _ = a.field("proc.name")
	if pid, ok := a.field("proc.pid"); ok {
		if n, err := strconv.ParseUint(pid, 10, 32); err == nil {
			ev.TGID, ev.PID = uint32(n), uint32(n)
		}
	}
	if t, err := time.Parse(time.RFC3339Nano, a.Time); err == nil {
		ev.Time = t
	}

	flags, known := sensor.Flags(0), false
	if s, ok := a.field("evt.arg.flags"); ok {
		f, err := ParseFlags(s)
		if err != nil {
			return sensor.Event{}, fmt.Errorf("%w: rule %q: %w", ErrPartial, a.Rule, err)
		}
		flags, known = f, true
	} else {
		for name, bit := range map[string]sensor.Flags{
			"proc.is_exe_upper_layer": sensor.FlagUpperLayer,
			"proc.is_exe_from_memfd":  sensor.FlagFromMemfd,
			"proc.is_exe_writable":    sensor.FlagWritable,
		} {
			if s, ok := a.field(name); ok {
				known = true
				if s == "true" {
					flags |= bit
				}
			}
		}
	}
	switch a.Rule {
	case DropAndExecuteRule:
		// The rule's condition is proc.is_exe_upper_layer=true: its alert is the upper-layer proof.
		flags |= sensor.FlagUpperLayer
	case ProbeRule:
		if !known {
			return sensor.Event{}, fmt.Errorf("%w: rule %q without evt.arg.flags or proc.is_exe_* fields", ErrPartial, a.Rule)
		}
		// Falco saw the exec and did not flag it upper layer: for an executable that is not a
		// memfd that is the lower layer (older libs have no lower-layer flag of their own).
		if !flags.Has(sensor.FlagUpperLayer) && !flags.Has(sensor.FlagFromMemfd) {
			flags |= sensor.FlagLowerLayer
		}
	}
	ev.Flags = flags
	return ev, nil
}

// drops returns the n_drops of a DropRule alert ("N system calls dropped in last second"), at
// least 1: an alert whose count cannot be read still reports a drop.
func (a *Alert) drops() uint64 {
	if v, ok := a.field("n_drops"); ok {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 1
}

var flagBits = map[string]sensor.Flags{
	"EXE_WRITABLE":    sensor.FlagWritable,
	"EXE_UPPER_LAYER": sensor.FlagUpperLayer,
	"EXE_FROM_MEMFD":  sensor.FlagFromMemfd,
	"EXE_LOWER_LAYER": sensor.FlagLowerLayer,
}

// ParseFlags reads evt.arg.flags in the three spellings Falco uses: names joined by "|"
// ("EXE_WRITABLE|EXE_UPPER_LAYER", what %evt.arg.flags prints), the value with its names
// ("3(EXE_WRITABLE|EXE_UPPER_LAYER)", as in evt.args) and the bare value ("3", as
// %evt.rawarg.flags prints). "0" and "" mean no flag. Unknown names are an error; unknown bits
// are kept.
func ParseFlags(s string) (sensor.Flags, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	if i := strings.IndexByte(s, '('); i > 0 && strings.HasSuffix(s, ")") {
		v, err := strconv.ParseUint(s[:i], 0, 32)
		if err != nil {
			return 0, fmt.Errorf("exe flags %q: %w", s, err)
		}
		names, err := ParseFlags(s[i+1 : len(s)-1])
		if err != nil {
			return 0, err
		}
		if names != sensor.Flags(v)&(sensor.FlagWritable|sensor.FlagUpperLayer|sensor.FlagFromMemfd|sensor.FlagLowerLayer) {
			return 0, fmt.Errorf("exe flags %q: value and names disagree", s)
		}
		return sensor.Flags(v), nil
	}
	if v, err := strconv.ParseUint(s, 0, 32); err == nil {
		return sensor.Flags(v), nil
	}
	var f sensor.Flags
	for _, name := range strings.Split(s, "|") {
		bit, ok := flagBits[strings.TrimSpace(name)]
		if !ok {
			return 0, fmt.Errorf("exe flags %q: unknown flag %q", s, name)
		}
		f |= bit
	}
	return f, nil
}
