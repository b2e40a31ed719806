package matrix

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/internal/selection"
)

// FalcoBefore3286 is a Falco release before the falco#3286 fix (0.38.2). The report also decides for
// a Falco sensor of this version from each kernel's real probe facts: the known-issue rule must skip
// modern_ebpf exactly where the probe finds no overlay types (the falco#3286 situation).
const FalcoBefore3286 = "0.38.1"

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
	// Faults are the sensor faults (agent/selftest.Fault) the guest injected; each run with one
	// must fail the self-test because of the fault.
	Faults []string
	// FaultDrivers are the drivers the faults ran with (default: the first driver).
	FaultDrivers []string
}

// ProbeResult is what `driverpilot probe -o json` printed in the guest: the facts and the
// selection engine's decision for the Builtin sensor with the default preference.
type ProbeResult struct {
	Probe    v1alpha1.ProbeFacts `json:"probe"`
	Decision selection.Decision  `json:"decision"`
	// Falco is the host's decision, from the same facts, for a Falco FalcoBefore3286 sensor with the
	// default preference and the embedded known issues; not part of the probe's output.
	Falco *selection.Decision `json:"-"`
}

// FaultCell is one run with an injected sensor fault. It passes only when the self-test failed,
// and failed for the fault's reason: a self-test that passed would be a false pass, one that failed
// for another reason (the sensor did not start) proves nothing.
type FaultCell struct {
	Driver, Fault string
	// Result is Caught, FalsePass, Inconclusive or what went wrong before it (NoResult, Corrupt...).
	Result string
	// Failed are the checks the fault made fail.
	Failed []string
	Detail string
	Pass   bool
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
	// Probe is the guest's probe section, nil when it is missing or unreadable.
	Probe *ProbeResult
	// Worked are the drivers whose every check passed, in the matrix's driver order.
	Worked []string
	// Faults are the runs with an injected sensor fault.
	Faults []FaultCell
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
	for _, f := range r.Faults {
		if !f.Pass {
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
	if s, ok := sections[SectionProbe]; ok && s.Err == nil {
		var pr ProbeResult
		if err := json.Unmarshal(s.Body, &pr); err != nil || s.RC != 0 {
			r.Problems = append(r.Problems, fmt.Sprintf("probe: exit %d, output is not the probe's JSON (%v): %.300s", s.RC, err, strings.TrimSpace(string(s.Body))))
		} else {
			r.Probe = &pr
		}
	} else if ok {
		r.Problems = append(r.Problems, "probe: "+s.Err.Error())
	} else if booted {
		r.Problems = append(r.Problems, "no probe output: the decision for this kernel is unknown")
	}
	wantMethod := ""
	if b.OverlayBTF != nil {
		wantMethod = map[bool]string{true: "CORE", false: "InodeOffset"}[*b.OverlayBTF]
	}
	// The probe says where overlay's types are; CORE must decide wherever they are, the inode
	// offset only where they are not.
	if r.Probe != nil {
		probed := map[string]string{v1alpha1.OverlayTypesVmlinux: "CORE", v1alpha1.OverlayTypesModule: "CORE",
			v1alpha1.OverlayTypesAbsent: "InodeOffset"}[r.Probe.Probe.BTF.OverlayTypes.Value]
		switch {
		case wantMethod == "":
			wantMethod = probed
		case probed != "" && probed != wantMethod:
			r.Problems = append(r.Problems, fmt.Sprintf("the probe finds overlay types %s, this boot needs the %s method",
				r.Probe.Probe.BTF.OverlayTypes.Value, wantMethod))
		}
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
		problem := runProblem(d, sections)
		if problem != "" {
			r.Problems = append(r.Problems, problem)
		}
		worked := problem == "" && len(cells) > 0
		for _, c := range cells {
			worked = worked && c.Pass
		}
		if worked {
			r.Worked = append(r.Worked, d)
		}
	}
	if r.Probe != nil {
		if problem := decisionProblem(r.Probe.Decision, drivers, r.Worked); problem != "" {
			r.Problems = append(r.Problems, problem)
		}
		d, err := falcoDecision(r.Probe.Probe)
		if err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("decide for Falco %s: %v", FalcoBefore3286, err))
		} else {
			r.Probe.Falco = &d
			if problem := falco3286Problem(r.Probe.Probe, d); problem != "" {
				r.Problems = append(r.Problems, problem)
			}
		}
	}
	faultDrivers := b.FaultDrivers
	if len(faultDrivers) == 0 && len(drivers) > 0 {
		faultDrivers = drivers[:1]
	}
	if len(b.Faults) == 0 {
		faultDrivers = nil
	}
	for _, d := range faultDrivers {
		for _, f := range b.Faults {
			r.Faults = append(r.Faults, faultCell(d, f, checks, sections, booted))
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

// falcoDecision decides for a Falco FalcoBefore3286 sensor from a kernel's facts.
func falcoDecision(f v1alpha1.ProbeFacts) (selection.Decision, error) {
	issues, err := knownissues.Default()
	if err != nil {
		return selection.Decision{}, err
	}
	return selection.Decide(selection.Input{
		Facts:       f,
		Policy:      v1alpha1.DriverPolicy{Preference: selection.DefaultPreference},
		Sensor:      v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, FalcoVersion: FalcoBefore3286},
		KnownIssues: issues,
	})
}

// falco3286Problem reports a Falco decision where the falco#3286 rule fired on a kernel whose probe
// found overlay types, or did not fire on one whose probe found none.
func falco3286Problem(f v1alpha1.ProbeFacts, d selection.Decision) string {
	fired := false
	for _, r := range d.Reasons {
		fired = fired || (r.Driver == v1alpha1.DriverModernEBPF && strings.Contains(r.Rule+" "+r.Message, "falco#3286"))
	}
	absent := f.BTF.OverlayTypes.Value == v1alpha1.OverlayTypesAbsent
	switch {
	case absent && (!fired || d.Driver == v1alpha1.DriverModernEBPF):
		return fmt.Sprintf("Falco %s: overlay types are absent, yet falco#3286 did not keep modern_ebpf from first place (candidates %v)",
			FalcoBefore3286, d.Candidates)
	case !absent && fired:
		return fmt.Sprintf("Falco %s: falco#3286 fired though the probe finds overlay types in %s", FalcoBefore3286, f.BTF.OverlayTypes.Value)
	}
	return ""
}

// decisionProblem reports a decision whose first driver is not one that passed on this kernel: the
// selection engine would send nodes with this kernel to a driver that cannot see an upper-layer exec.
func decisionProblem(d selection.Decision, tested, worked []string) string {
	switch {
	case d.Driver == "":
		if len(worked) > 0 {
			return fmt.Sprintf("the selection engine finds no driver, but %s passed", strings.Join(worked, ","))
		}
	case !slices.Contains(tested, string(d.Driver)):
		return fmt.Sprintf("the selection engine ranks %s first, which the matrix does not run", d.Driver)
	case !slices.Contains(worked, string(d.Driver)):
		return fmt.Sprintf("the selection engine ranks %s first (candidates %v), but it did not pass here: fix the rules (internal/selection, config/knownissues)",
			d.Driver, d.Candidates)
	}
	return ""
}

// faultCell judges one run with an injected fault: it must fail, and for the fault's reason.
func faultCell(driver, fault string, checks []string, sections map[string]Section, booted bool) FaultCell {
	fc := FaultCell{Driver: driver, Fault: fault}
	s, ok := sections[FaultSection(fault, driver)]
	switch {
	case !ok && !booted:
		fc.Result, fc.Detail = "NoBoot", "the guest never ran the self-test"
		return fc
	case !ok:
		fc.Result, fc.Detail = "NoResult", "no self-test output on the console"
		return fc
	case s.Err != nil:
		fc.Result, fc.Detail = "Corrupt", s.Err.Error()
		return fc
	}
	var st v1alpha1.SelfTestStatus
	if err := json.Unmarshal(s.Body, &st); err != nil {
		fc.Result, fc.Detail = "BadOutput", fmt.Sprintf("exit %d, output is not SelfTestStatus JSON (%v)", s.RC, err)
		return fc
	}
	if st.Result == v1alpha1.SelfTestPassed || s.RC == 0 {
		fc.Result, fc.Detail = "FalsePass", fmt.Sprintf("the self-test passed (result %s, exit %d) with the fault injected", st.Result, s.RC)
		return fc
	}
	// What the fault must do to each requested check, and what must still pass.
	mustFail := map[string]string{}
	switch fault {
	case "all-lower":
		mustFail["ExeUpperLayer"], mustFail["ExeCopyUp"] = "lower layer", "lower layer"
	case "drop-events":
		for _, c := range checks {
			mustFail[c] = "no event"
		}
	default:
		fc.Result, fc.Detail = "Inconclusive", "unknown fault "+fault
		return fc
	}
	var missing []string
	for _, name := range checks {
		want, must := mustFail[name]
		var cr *v1alpha1.CheckResult
		for i := range st.Checks {
			if string(st.Checks[i].Name) == name {
				cr = &st.Checks[i]
			}
		}
		switch {
		case cr == nil:
			missing = append(missing, name+" not run")
		case must && cr.Result == v1alpha1.SelfTestFailed && strings.HasPrefix(cr.Observed, want):
			fc.Failed = append(fc.Failed, name)
		case must:
			missing = append(missing, fmt.Sprintf("%s %s (observed %q, want a failure observing %q)", name, cr.Result, cr.Observed, want))
		case cr.Result != v1alpha1.SelfTestPassed:
			missing = append(missing, fmt.Sprintf("%s %s though the fault does not touch it", name, cr.Result))
		}
	}
	if len(missing) > 0 || len(fc.Failed) == 0 {
		fc.Result = "Inconclusive"
		fc.Detail = joinNonEmpty(": ", "the self-test failed, but not (only) for the fault: "+strings.Join(missing, "; "), st.Reason)
		return fc
	}
	fc.Result, fc.Pass = "Caught", true
	return fc
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

// WriteTable prints the boot table, the probe-and-decision table, the check matrix, the fault
// table and the failures, and returns whether all passed.
func WriteTable(w io.Writer, reports []KernelReport) bool {
	all := len(reports) > 0
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KERNEL\tRELEASE\tARCH\tBOOT\tSELFTESTS\tWALL\tVERDICT")
	for _, r := range reports {
		release, arch, boot, run := "-", "-", "-", "-"
		if r.Info != nil {
			release, arch = r.Info.KernelRelease, orDash(r.Info.Architecture)
			boot = fmt.Sprintf("%.1fs", r.Info.UptimeAtInit)
			if r.Info.Host {
				boot = "host"
			}
		}
		if r.Summary != nil {
			var total float64
			for _, run := range r.Summary.Runs {
				total += run.Seconds
			}
			run = fmt.Sprintf("%.1fs (%d runs)", total, len(r.Summary.Runs))
		}
		verdict := "PASS"
		if !r.Passed() {
			verdict, all = "FAIL", false
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1fs\t%s\n", r.Kernel, release, arch, boot, run, r.Wall.Seconds(), verdict)
	}
	tw.Flush()

	fmt.Fprintln(w, "\nProbe facts and the selection engine's decision (Builtin sensor, default preference) vs what passed:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "KERNEL\tDISTRO\tVMLINUX BTF\tOVERLAY TYPES\tTP_BTF\tRAW_TP\tRINGBUF\tLOCKDOWN\tDECISION\tPASSED\tOK\tFALCO %s\n", FalcoBefore3286)
	for _, r := range reports {
		if r.Probe == nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\t%s\t✗\t-\n", r.Kernel, orDash(strings.Join(r.Worked, ",")))
			continue
		}
		f, d := r.Probe.Probe, r.Probe.Decision
		ok := "✓"
		if decisionProblem(d, driversOf(r.Cells), r.Worked) != "" {
			ok = "✗"
		}
		falco := "-"
		if r.Probe.Falco != nil {
			falco = orDash(candidates(*r.Probe.Falco, ">"))
			if falco3286Problem(f, *r.Probe.Falco) != "" {
				falco += " ✗"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Kernel, orDash(strings.TrimSpace(f.Distro.ID+" "+f.Distro.VersionID)),
			answer(f.BTF.Vmlinux), orDash(f.BTF.OverlayTypes.Value),
			answer(f.EBPF.TPBTF), answer(f.EBPF.RawTracepoint), answer(f.EBPF.RingBuffer), orDash(f.Lockdown.Value),
			orDash(candidates(d, ">")), orDash(strings.Join(r.Worked, ",")), ok, falco)
	}
	tw.Flush()

	fmt.Fprintln(w, "\nChecks (✗ marks a failed cell), the method that decided the layer and whether CORE and InodeOffset agree:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	var checks []string
	for _, r := range reports {
		for _, c := range r.Cells {
			if !slices.Contains(checks, c.Check) {
				checks = append(checks, c.Check)
			}
		}
	}
	fmt.Fprintf(tw, "KERNEL\tDRIVER\t%s\tMETHOD\tAGREE\n", strings.Join(checks, "\t"))
	for _, r := range reports {
		for _, d := range driversOf(r.Cells) {
			results := make([]string, len(checks))
			var methods, agree []string
			for i, name := range checks {
				results[i] = "-"
				for _, c := range r.Cells {
					if c.Driver != d || c.Check != name {
						continue
					}
					results[i] = c.Result
					if !c.Pass {
						results[i] += " ✗"
					}
					if c.Method != "-" && c.Method != "" && !slices.Contains(methods, c.Method) {
						methods = append(methods, c.Method)
					}
					if c.Agreement != "" && !slices.Contains(agree, c.Agreement) {
						agree = append(agree, c.Agreement)
					}
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Kernel, d, strings.Join(results, "\t"),
				orDash(strings.Join(methods, ",")), orDash(strings.Join(agree, ",")))
		}
	}
	tw.Flush()

	faults := false
	for _, r := range reports {
		faults = faults || len(r.Faults) > 0
	}
	if faults {
		fmt.Fprintln(w, "\nInjected sensor faults (each must fail the self-test because of the fault; FalsePass is the bug):")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "KERNEL\tDRIVER\tFAULT\tRESULT\tCHECKS THE FAULT FAILED")
		falsePasses := 0
		for _, r := range reports {
			for _, f := range r.Faults {
				res := f.Result
				if !f.Pass {
					res += " ✗"
				}
				if f.Result == "FalsePass" {
					falsePasses++
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Kernel, f.Driver, f.Fault, res, orDash(strings.Join(f.Failed, ",")))
			}
		}
		tw.Flush()
		fmt.Fprintf(w, "false passes: %d\n", falsePasses)
	}

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
		for _, f := range r.Faults {
			if !f.Pass {
				fmt.Fprintf(w, "  - fault %s with %s: %s: %s\n", f.Fault, f.Driver, f.Result, f.Detail)
			}
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

// candidates joins a decision's candidates, best first.
func candidates(d selection.Decision, sep string) string {
	var out []string
	for _, c := range d.Candidates {
		out = append(out, string(c))
	}
	return strings.Join(out, sep)
}

// driversOf lists the drivers of cells in their order.
func driversOf(cells []Cell) []string {
	var out []string
	for _, c := range cells {
		if !slices.Contains(out, c.Driver) {
			out = append(out, c.Driver)
		}
	}
	return out
}

func answer(b v1alpha1.BoolFact) string { return orDash(string(b.Answer)) }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// WriteMarkdown prints the kernel table the README shows: one row per kernel with the probe's
// overlay types, the decision, each driver's checks and method, and the faults.
func WriteMarkdown(w io.Writer, reports []KernelReport) {
	fmt.Fprintln(w, "| kernel | arch | overlay types | decision | passed | method (agreement) | faults | verdict |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range reports {
		arch, types, decision := "-", "-", "-"
		if r.Info != nil {
			arch = orDash(r.Info.Architecture)
		}
		if r.Probe != nil {
			types = orDash(r.Probe.Probe.BTF.OverlayTypes.Value)
			decision = orDash(candidates(r.Probe.Decision, " > "))
		}
		var methods []string
		for _, c := range r.Cells {
			if c.Method == "-" || c.Method == "" {
				continue
			}
			m := c.Method
			if c.Agreement != "" {
				m += " (" + c.Agreement + ")"
			}
			if !slices.Contains(methods, m) {
				methods = append(methods, m)
			}
		}
		var faults []string
		for _, f := range r.Faults {
			faults = append(faults, f.Fault+": "+f.Result)
		}
		verdict := "pass"
		if !r.Passed() {
			verdict = "**FAIL**"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Kernel, arch, types, decision,
			orDash(strings.Join(r.Worked, ", ")), orDash(strings.Join(methods, ", ")), orDash(strings.Join(faults, ", ")), verdict)
	}
}
