package matrix

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// Boot is one kernel's boot as the host saw it.
type Boot struct {
	// Kernel names the kernel (the ABI name, for example "6.1.0-56-amd64").
	Kernel string
	// Nonce is the nonce the host put on this boot's kernel command line.
	Nonce string
	// Log is the serial console log.
	Log []byte
	// Wall is how long qemu ran, boot to power-off.
	Wall time.Duration
	// QemuRC is qemu's exit code (124 when the host's timeout killed it).
	QemuRC int
	// OverlayBTF, when set, is whether the guest must have overlay's module BTF
	// (/sys/kernel/btf/overlay): a boot that did not stage what it claims to test fails. It also
	// fixes the method that must decide the layer: CORE with the module BTF (a sensor that silently
	// fell back would hide the falco#3286 bug class), InodeOffset without it.
	OverlayBTF *bool
}

// Cell is one kernel × driver × check result.
type Cell struct {
	Driver string
	Check  string
	// Result is the check's result (Passed, Failed, NotApplicable) or what went wrong before it
	// (NoBoot, NoResult, Corrupt, BadOutput, Missing).
	Result string
	// Method is how the sensor decided the layer, as the self-test reported it.
	Method string
	// Agreement is whether the CORE and InodeOffset methods agreed (Agree, Disagree, SingleMethod),
	// read from the check's message; "" when the message does not say.
	Agreement string
	// Detail explains a failed cell.
	Detail string
	// Pass is true only for a Passed check from a run that itself passed.
	Pass bool
}

// KernelReport is the verdict for one kernel.
type KernelReport struct {
	Kernel string
	// Info is the guest's info section, nil when the guest never got that far.
	Info *GuestInfo
	// Summary is the guest's done section, nil when the guest did not finish.
	Summary *Summary
	Cells   []Cell
	// Problems fail the kernel even when every cell passed (setup failures, a missing done marker).
	Problems []string
	// Tail is the end of the console log, shown when the kernel did not boot or did not finish.
	Tail []string
	// Stderr holds the end of each failed driver's self-test stderr, as the guest copied it to the console.
	Stderr map[string][]string
	Wall   time.Duration
}

// Passed is true when every cell passed and nothing else went wrong.
func (r KernelReport) Passed() bool {
	if len(r.Problems) > 0 || len(r.Cells) == 0 {
		return false
	}
	for _, c := range r.Cells {
		if !c.Pass {
			return false
		}
	}
	return true
}

// tailLines is how much of the console a failed boot shows; stderrLines how much of a failed
// driver's self-test stderr.
const (
	tailLines   = 25
	stderrLines = 15
)

// StderrPrefix starts each line of a driver's self-test stderr that the guest copies to the console.
func StderrPrefix(driver string) string { return "selftest[" + driver + "]: " }

// StderrLines returns the last n lines of a driver's self-test stderr found in a console log.
func StderrLines(log []byte, driver string, n int) []string {
	var out []string
	prefix := StderrPrefix(driver)
	for _, l := range strings.Split(strings.ReplaceAll(string(log), "\r", ""), "\n") {
		if i := strings.Index(l, prefix); i >= 0 {
			out = append(out, l[i+len(prefix):])
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// Evaluate turns one boot's console log into cells for every driver × check the matrix expects.
// It is strict: anything missing, torn or inconsistent is a failure.
func Evaluate(b Boot, drivers, checks []string) KernelReport {
	r := KernelReport{Kernel: b.Kernel, Wall: b.Wall}
	sections := map[string]Section{}
	for _, s := range Parse(b.Log, b.Nonce) {
		sections[s.Name] = s
	}
	if s, ok := sections[SectionInfo]; ok && s.Err == nil {
		var gi GuestInfo
		if err := json.Unmarshal(s.Body, &gi); err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("info section: %v", err))
		} else {
			r.Info = &gi
			for _, p := range gi.Problems {
				r.Problems = append(r.Problems, "guest setup: "+p)
			}
			for _, m := range gi.Modules {
				if m.Error != "" {
					r.Problems = append(r.Problems, fmt.Sprintf("module %s: %s", m.Name, m.Error))
				}
			}
		}
	} else if ok {
		r.Problems = append(r.Problems, s.Err.Error())
	}
	if s, ok := sections[SectionDone]; ok && s.Err == nil {
		var sum Summary
		if err := json.Unmarshal(s.Body, &sum); err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("done section: %v", err))
		} else {
			r.Summary = &sum
		}
	}
	switch {
	case r.Info == nil && len(sections) == 0:
		r.Problems = append(r.Problems, fmt.Sprintf("kernel did not reach /init (qemu exit %d)", b.QemuRC))
	case r.Summary == nil:
		r.Problems = append(r.Problems, fmt.Sprintf("guest did not finish: no done marker (qemu exit %d)", b.QemuRC))
	}
	if b.QemuRC == 124 {
		r.Problems = append(r.Problems, "qemu was killed at the timeout")
	}
	if b.OverlayBTF != nil && r.Info != nil && r.Info.OverlayModuleBTF != *b.OverlayBTF {
		r.Problems = append(r.Problems, fmt.Sprintf("overlay module BTF present=%t, this boot needs present=%t",
			r.Info.OverlayModuleBTF, *b.OverlayBTF))
	}
	booted := r.Info != nil
	wantMethod := ""
	if b.OverlayBTF != nil {
		wantMethod = map[bool]string{true: "CORE", false: "InodeOffset"}[*b.OverlayBTF]
	}
	for _, d := range drivers {
		cells := driverCells(d, checks, sections, booted)
		for i := range cells {
			if c := &cells[i]; c.Pass && wantMethod != "" && c.Method != "-" && c.Method != wantMethod {
				c.Pass = false
				c.Detail = fmt.Sprintf("decided by %s, this boot must decide by %s", c.Method, wantMethod)
			}
		}
		r.Cells = append(r.Cells, cells...)
		if problem := runProblem(d, sections); problem != "" {
			r.Problems = append(r.Problems, problem)
		}
	}
	if !r.Passed() {
		if r.Summary == nil {
			r.Tail = Tail(b.Log, tailLines)
		}
		r.Stderr = map[string][]string{}
		for _, d := range drivers {
			if lines := StderrLines(b.Log, d, stderrLines); len(lines) > 0 {
				r.Stderr[d] = lines
			}
		}
	}
	return r
}

// agreementRE finds the method agreement in a check's message, e.g. "method CORE (Agree)".
var agreementRE = regexp.MustCompile(`method \w+ \((\w+)\)`)

// driverCells evaluates one driver's self-test section against the expected checks.
func driverCells(driver string, checks []string, sections map[string]Section, booted bool) []Cell {
	fail := func(result, detail string) []Cell {
		var cells []Cell
		for _, c := range checks {
			cells = append(cells, Cell{Driver: driver, Check: c, Result: result, Method: "-", Detail: detail})
		}
		return cells
	}
	s, ok := sections[SelftestSection(driver)]
	switch {
	case !ok && !booted:
		return fail("NoBoot", "the guest never ran the self-test")
	case !ok:
		return fail("NoResult", "no self-test output on the console")
	case s.Err != nil:
		return fail("Corrupt", s.Err.Error())
	}
	var st v1alpha1.SelfTestStatus
	if err := json.Unmarshal(s.Body, &st); err != nil {
		return fail("BadOutput", fmt.Sprintf("exit %d, output is not SelfTestStatus JSON (%v): %.300s", s.RC, err, strings.TrimSpace(string(s.Body))))
	}
	var cells []Cell
	for _, name := range checks {
		cell := Cell{Driver: driver, Check: name, Result: "Missing", Method: "-"}
		found := false
		for _, cr := range st.Checks {
			if string(cr.Name) != name {
				continue
			}
			found = true
			cell.Result = string(cr.Result)
			if cr.Method != "" {
				cell.Method = cr.Method
			}
			if m := agreementRE.FindStringSubmatch(cr.Message); m != nil {
				cell.Agreement = m[1]
			}
			cell.Pass = cr.Result == v1alpha1.SelfTestPassed
			if !cell.Pass {
				cell.Detail = joinNonEmpty("; ", "expected "+cr.Expected, "observed "+cr.Observed, cr.Message)
			} else if cell.Agreement == "Disagree" {
				// CORE decided and the check passed, but the fallback method would have been wrong
				// on this kernel: the matrix exists to catch exactly that.
				cell.Pass = false
				cell.Detail = "CORE and InodeOffset disagree: " + cr.Message
			}
		}
		if !found {
			cell.Detail = joinNonEmpty(": ", fmt.Sprintf("check not in the self-test result (result %s, exit %d)", st.Result, s.RC),
				joinNonEmpty(": ", st.Reason, st.Message))
		}
		cells = append(cells, cell)
	}
	return cells
}

// runProblem reports a self-test run whose overall verdict disagrees with its checks.
func runProblem(driver string, sections map[string]Section) string {
	s, ok := sections[SelftestSection(driver)]
	if !ok || s.Err != nil {
		return ""
	}
	var st v1alpha1.SelfTestStatus
	if json.Unmarshal(s.Body, &st) != nil {
		return ""
	}
	switch {
	case string(st.Driver) != driver:
		return fmt.Sprintf("%s: the self-test reports driver %q", driver, st.Driver)
	case st.Result != v1alpha1.SelfTestPassed || s.RC != 0:
		return fmt.Sprintf("%s: self-test result %s, exit %d%s", driver, st.Result, s.RC,
			prefixIf(": ", joinNonEmpty(": ", st.Reason, st.Message)))
	}
	return ""
}

func sortedKeys(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func joinNonEmpty(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if p != "" && p != "expected" && p != "observed" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}

func prefixIf(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

// WriteTable prints the timing table, the matrix and the failures, and returns whether all passed.
func WriteTable(w io.Writer, reports []KernelReport) bool {
	all := len(reports) > 0
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KERNEL\tRELEASE\tOVERLAY BTF\tBOOT\tSELFTESTS\tWALL\tVERDICT")
	for _, r := range reports {
		release, btf, boot, run := "-", "-", "-", "-"
		if r.Info != nil {
			release = r.Info.KernelRelease
			btf = map[bool]string{true: "module", false: "absent"}[r.Info.OverlayModuleBTF]
			boot = fmt.Sprintf("%.1fs", r.Info.UptimeAtInit)
		}
		if r.Summary != nil {
			var total float64
			var parts []string
			for _, run := range r.Summary.Runs {
				total += run.Seconds
				parts = append(parts, fmt.Sprintf("%s %.1fs", run.Driver, run.Seconds))
			}
			run = fmt.Sprintf("%.1fs (%s)", total, strings.Join(parts, ", "))
		}
		verdict := "PASS"
		if !r.Passed() {
			verdict, all = "FAIL", false
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1fs\t%s\n", r.Kernel, release, btf, boot, run, r.Wall.Seconds(), verdict)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KERNEL\tDRIVER\tCHECK\tRESULT\tMETHOD (CORE vs InodeOffset)")
	for _, r := range reports {
		for _, c := range r.Cells {
			res := c.Result
			if !c.Pass {
				res += " ✗"
			}
			method := c.Method
			if c.Agreement != "" {
				method += " (" + c.Agreement + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Kernel, c.Driver, c.Check, res, method)
		}
	}
	tw.Flush()
	for _, r := range reports {
		if r.Passed() {
			continue
		}
		fmt.Fprintf(w, "\n%s failed:\n", r.Kernel)
		for _, p := range r.Problems {
			fmt.Fprintf(w, "  - %s\n", p)
		}
		// Cells that failed for the same reason (a driver that never ran) are listed once.
		var order []string
		checksByFailure := map[string][]string{}
		for _, c := range r.Cells {
			if c.Pass {
				continue
			}
			key := c.Driver + "\x00" + c.Result + prefixIf(": ", c.Detail)
			if _, ok := checksByFailure[key]; !ok {
				order = append(order, key)
			}
			checksByFailure[key] = append(checksByFailure[key], c.Check)
		}
		for _, key := range order {
			driver, failure, _ := strings.Cut(key, "\x00")
			fmt.Fprintf(w, "  - %s %s: %s\n", driver, strings.Join(checksByFailure[key], ","), failure)
		}
		for _, d := range sortedKeys(r.Stderr) {
			fmt.Fprintf(w, "  %s self-test stderr (last %d lines):\n", d, len(r.Stderr[d]))
			for _, l := range r.Stderr[d] {
				fmt.Fprintf(w, "    | %s\n", l)
			}
		}
		if len(r.Tail) > 0 {
			fmt.Fprintf(w, "  last %d console lines:\n", len(r.Tail))
			for _, l := range r.Tail {
				fmt.Fprintf(w, "    | %s\n", l)
			}
		}
	}
	return all
}
