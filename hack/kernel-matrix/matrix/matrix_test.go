package matrix

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/internal/selection"
)

var (
	testDrivers = []string{"modern_ebpf", "ebpf"}
	testChecks  = []string{"ExeUpperLayer", "ExeLowerLayer", "ExeCopyUp", "ExeFromMemfd"}
)

const nonce = "0123456789abcdef"

// serial turns LF into CR LF the way the guest's console tty does.
func serial(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n")) }

func section(t *testing.T, name string, rc int, v any) []byte {
	t.Helper()
	var body []byte
	switch v := v.(type) {
	case []byte:
		body = v
	default:
		var err error
		if body, err = json.MarshalIndent(v, "", "  "); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := WriteSection(&buf, nonce, name, rc, body); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func passing(driver string) v1alpha1.SelfTestStatus {
	st := v1alpha1.SelfTestStatus{Driver: v1alpha1.Driver(driver), Result: v1alpha1.SelfTestPassed}
	for _, c := range testChecks {
		st.Checks = append(st.Checks, v1alpha1.CheckResult{Name: v1alpha1.CheckName(c), Result: v1alpha1.SelfTestPassed, Method: "CORE",
			Message: "flags EXE_UPPER_LAYER|EXE_OVERLAY, method CORE (Agree)"})
	}
	return st
}

// probeResult is what `driverpilot probe` prints for a kernel whose overlay types are where
// overlayTypes says, with the decision ranking candidates.
func probeResult(overlayTypes string, candidates ...v1alpha1.Driver) ProbeResult {
	yes := v1alpha1.BoolFact{Answer: v1alpha1.AnswerYes}
	var pr ProbeResult
	pr.Probe.BTF.Vmlinux, pr.Probe.EBPF.TPBTF, pr.Probe.EBPF.RawTracepoint, pr.Probe.EBPF.RingBuffer = yes, yes, yes, yes
	pr.Probe.BTF.OverlayTypes.Value = overlayTypes
	pr.Probe.Lockdown.Value = "none"
	pr.Decision = selection.Decision{Candidates: candidates}
	if len(candidates) > 0 {
		pr.Decision.Driver = candidates[0]
	}
	return pr
}

// goodLog is a whole boot in which everything passed, with kernel noise around the sections.
func goodLog(t *testing.T, statuses map[string]v1alpha1.SelfTestStatus, rcs map[string]int) []byte {
	t.Helper()
	return logWith(t, statuses, rcs, probeResult(v1alpha1.OverlayTypesModule, "modern_ebpf", "ebpf"), nil)
}

// logWith is goodLog with a given probe section and fault runs (fault/driver -> status, exit 1).
func logWith(t *testing.T, statuses map[string]v1alpha1.SelfTestStatus, rcs map[string]int, pr ProbeResult,
	faults map[string]v1alpha1.SelfTestStatus) []byte {
	t.Helper()
	var log bytes.Buffer
	log.WriteString("SeaBIOS (version 1.16.2)\n[    0.000000] Linux version 6.1.0-56-amd64\n")
	log.Write(section(t, SectionInfo, 0, GuestInfo{KernelRelease: "6.1.0-56-amd64", UptimeAtInit: 3.2, OverlayModuleBTF: true,
		Modules: []ModuleLoad{{Name: "overlay"}}}))
	log.Write(section(t, SectionProbe, 0, pr))
	var sum Summary
	for _, d := range testDrivers {
		st, ok := statuses[d]
		if !ok {
			st = passing(d)
		}
		log.WriteString(StderrPrefix(d) + "sensor started\n")
		log.Write(section(t, SelftestSection(d), rcs[d], st))
		sum.Runs = append(sum.Runs, Run{Driver: d, RC: rcs[d], Seconds: 4})
	}
	for name, st := range faults {
		fault, driver, _ := strings.Cut(name, "/")
		log.Write(section(t, FaultSection(fault, driver), 1, st))
	}
	log.Write(section(t, SectionDone, 0, sum))
	log.WriteString("[   20.100000] reboot: Power down\n")
	return serial(log.Bytes())
}

func boot(log []byte) Boot {
	return Boot{Kernel: "6.1.0-56-amd64", Nonce: nonce, Log: log, Wall: 12 * time.Second}
}

func TestAllPassed(t *testing.T) {
	r := Evaluate(boot(goodLog(t, nil, nil)), testDrivers, testChecks)
	if !r.Passed() {
		t.Fatalf("want pass, got problems %v cells %+v", r.Problems, r.Cells)
	}
	if got, want := len(r.Cells), len(testDrivers)*len(testChecks); got != want {
		t.Fatalf("cells: got %d, want %d", got, want)
	}
	var out bytes.Buffer
	if !WriteTable(&out, []KernelReport{r}) {
		t.Fatalf("WriteTable says failed:\n%s", out.String())
	}
	for _, want := range []string{
		"6.1.0-56-amd64  modern_ebpf  Passed         Passed         Passed     Passed        CORE    Agree",
		"PASS", "3.2s", "Module", "modern_ebpf>ebpf  modern_ebpf,ebpf  ✓   ebpf>",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestMarkdown(t *testing.T) {
	r := Evaluate(boot(goodLog(t, nil, nil)), testDrivers, testChecks)
	var out bytes.Buffer
	WriteMarkdown(&out, []KernelReport{r})
	want := "| 6.1.0-56-amd64 | - | Module | modern_ebpf > ebpf | modern_ebpf, ebpf | CORE (Agree) | - | pass |"
	if !strings.Contains(out.String(), want) {
		t.Errorf("markdown lacks %q:\n%s", want, out.String())
	}
}

func TestFailures(t *testing.T) {
	failedCheck := passing("ebpf")
	failedCheck.Result = v1alpha1.SelfTestFailed
	failedCheck.Checks[0].Result = v1alpha1.SelfTestFailed
	failedCheck.Checks[0].Observed = "lower layer"

	notApplicable := passing("ebpf")
	notApplicable.Checks[1].Result = v1alpha1.SelfTestNotApplicable

	missingCheck := passing("ebpf")
	missingCheck.Checks = missingCheck.Checks[:3]

	loadFailed := v1alpha1.SelfTestStatus{Driver: "ebpf", Result: v1alpha1.SelfTestFailed, Reason: "SensorLoadFailed",
		Message: "load program: permission denied"}

	wrongDriver := passing("modern_ebpf")

	disagree := passing("ebpf")
	disagree.Checks[2].Message = "flags EXE_UPPER_LAYER|EXE_OVERLAY, method CORE (Disagree)"

	for _, tc := range []struct {
		name     string
		log      func(t *testing.T) []byte
		nonce    string
		qemuRC   int
		wantCell string // a failed cell's Result, "" when only Problems must fail the kernel
		want     string // text the failure report must contain
	}{
		{"failed check", func(t *testing.T) []byte {
			return goodLog(t, map[string]v1alpha1.SelfTestStatus{"ebpf": failedCheck}, map[string]int{"ebpf": 1})
		}, nonce, 0, "Failed", "observed lower layer"},
		{"NotApplicable is not Passed", func(t *testing.T) []byte {
			return goodLog(t, map[string]v1alpha1.SelfTestStatus{"ebpf": notApplicable}, nil)
		}, nonce, 0, "NotApplicable", "ExeLowerLayer"},
		{"check missing from the result", func(t *testing.T) []byte {
			return goodLog(t, map[string]v1alpha1.SelfTestStatus{"ebpf": missingCheck}, nil)
		}, nonce, 0, "Missing", "ExeFromMemfd"},
		{"sensor did not load", func(t *testing.T) []byte {
			return goodLog(t, map[string]v1alpha1.SelfTestStatus{"ebpf": loadFailed}, map[string]int{"ebpf": 1})
		}, nonce, 0, "Missing", "SensorLoadFailed: load program: permission denied"},
		{"passed JSON but exit code 1", func(t *testing.T) []byte {
			return goodLog(t, nil, map[string]int{"modern_ebpf": 1})
		}, nonce, 0, "", "modern_ebpf: self-test result Passed, exit 1"},
		{"result for another driver", func(t *testing.T) []byte {
			return goodLog(t, map[string]v1alpha1.SelfTestStatus{"ebpf": wrongDriver}, nil)
		}, nonce, 0, "", `reports driver "modern_ebpf"`},
		{"CORE and InodeOffset disagree", func(t *testing.T) []byte {
			return goodLog(t, map[string]v1alpha1.SelfTestStatus{"ebpf": disagree}, nil)
		}, nonce, 0, "Passed", "CORE and InodeOffset disagree"},
		{"output is not JSON", func(t *testing.T) []byte {
			var log bytes.Buffer
			log.Write(section(t, SectionInfo, 0, GuestInfo{KernelRelease: "x"}))
			log.WriteString(StderrPrefix("modern_ebpf") + "the selftest command is not built yet\n")
			log.Write(section(t, SelftestSection("modern_ebpf"), 1, []byte("")))
			log.Write(section(t, SelftestSection("ebpf"), 0, passing("ebpf")))
			log.Write(section(t, SectionDone, 0, Summary{}))
			return log.Bytes()
		}, nonce, 0, "BadOutput", "the selftest command is not built yet"},
		{"stale log from another boot", func(t *testing.T) []byte { return goodLog(t, nil, nil) },
			"fedcba9876543210", 0, "NoBoot", "did not reach /init"},
		{"kernel panic before init", func(t *testing.T) []byte {
			return []byte("\x1bc\x1b[?7l\x1b[2JSeaBIOS\r\n[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n")
		}, nonce, 0, "NoBoot", "| SeaBIOS\n    | [    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs"},
		{"killed while the self-test ran", func(t *testing.T) []byte {
			var log bytes.Buffer
			log.Write(section(t, SectionInfo, 0, GuestInfo{KernelRelease: "x"}))
			log.Write(section(t, SelftestSection("modern_ebpf"), 0, passing("modern_ebpf")))
			log.WriteString("dpmatrix-init: running /bin/driverpilot selftest --driver ebpf\n")
			return log.Bytes()
		}, nonce, 124, "NoResult", "killed at the timeout"},
		{"module failed to load", func(t *testing.T) []byte {
			var log bytes.Buffer
			log.Write(section(t, SectionInfo, 0, GuestInfo{KernelRelease: "x", Modules: []ModuleLoad{{Name: "overlay", Error: "exec format error"}}}))
			for _, d := range testDrivers {
				log.Write(section(t, SelftestSection(d), 0, passing(d)))
			}
			log.Write(section(t, SectionDone, 0, Summary{}))
			return log.Bytes()
		}, nonce, 0, "", "module overlay: exec format error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := boot(tc.log(t))
			b.Nonce, b.QemuRC = tc.nonce, tc.qemuRC
			r := Evaluate(b, testDrivers, testChecks)
			if r.Passed() {
				t.Fatalf("want failure, got pass: %+v", r)
			}
			if tc.wantCell != "" {
				found := false
				for _, c := range r.Cells {
					if c.Result == tc.wantCell && !c.Pass {
						found = true
					}
				}
				if !found {
					t.Errorf("no failed cell with result %s: %+v", tc.wantCell, r.Cells)
				}
			}
			var out bytes.Buffer
			if WriteTable(&out, []KernelReport{r}) {
				t.Errorf("WriteTable says all passed")
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("report lacks %q:\n%s", tc.want, out.String())
			}
		})
	}
}

// One failed kernel fails the whole matrix, and an empty matrix is not a pass.
func TestWriteTableAllKernels(t *testing.T) {
	good := Evaluate(boot(goodLog(t, nil, nil)), testDrivers, testChecks)
	bad := Evaluate(Boot{Kernel: "6.1.0-56-rt-amd64", Nonce: nonce, QemuRC: 1}, testDrivers, testChecks)
	var out bytes.Buffer
	if WriteTable(&out, []KernelReport{good, bad}) {
		t.Errorf("one failed kernel must fail the matrix:\n%s", out.String())
	}
	if WriteTable(&out, nil) {
		t.Errorf("an empty matrix must not pass")
	}
}

func TestParseKernelNoiseAndCorruption(t *testing.T) {
	body := []byte("{\n  \"a\": 1,\n  \"b\": 2\n}\n")
	var clean bytes.Buffer
	if err := WriteSection(&clean, nonce, "x", 3, body); err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(clean.String(), "\n")

	// A whole printk line between the body's lines is dropped; the checksum still holds.
	noisy := strings.Join(lines[:3], "") + "[   12.345678] overlayfs: upper fs does not support tmpfile.\n" + strings.Join(lines[3:], "")
	s := Parse(serial([]byte(noisy)), nonce)
	if len(s) != 1 || s[0].Err != nil || s[0].RC != 3 || !bytes.Equal(s[0].Body, body) {
		t.Fatalf("noisy section: %+v", s)
	}

	// Text torn into a body line is caught by the checksum.
	torn := strings.Replace(clean.String(), `"a": 1`, `"a": 1[  1.0] oops`, 1)
	s = Parse([]byte(torn), nonce)
	if len(s) != 1 || !errors.Is(s[0].Err, ErrCorrupt) {
		t.Fatalf("torn section: want ErrCorrupt, got %+v", s)
	}

	// A section without its END is truncated.
	s = Parse([]byte(strings.Join(lines[:4], "")), nonce)
	if len(s) != 1 || !errors.Is(s[0].Err, ErrTruncated) {
		t.Fatalf("truncated section: want ErrTruncated, got %+v", s)
	}

	// Another nonce's markers are not ours.
	if s = Parse(clean.Bytes(), "ffffffffffffffff"); len(s) != 0 {
		t.Fatalf("foreign nonce: want nothing, got %+v", s)
	}
}

func TestWriteSectionRejectsMarkerInBody(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteSection(&buf, nonce, "x", 0, []byte("@@DPMATRIX "+nonce+" END x rc=0@@")); err == nil {
		t.Fatal("a body holding the marker tag must be refused")
	}
	if err := WriteSection(&buf, nonce, "two words", 0, nil); err == nil {
		t.Fatal("a section name with a space must be refused")
	}
}

// A boot that claims to test the no-module-BTF situation must really lack the module BTF.
func TestOverlayBTFExpectation(t *testing.T) {
	b := boot(goodLog(t, nil, nil)) // the guest reports overlayModuleBTF=true
	absent := false
	b.OverlayBTF = &absent
	r := Evaluate(b, testDrivers, testChecks)
	if r.Passed() || len(r.Problems) == 0 || !strings.Contains(r.Problems[0], "overlay module BTF present=true") {
		t.Fatalf("want an overlay BTF problem, got %v", r.Problems)
	}
	present := true
	b.OverlayBTF = &present
	if r := Evaluate(b, testDrivers, testChecks); !r.Passed() {
		t.Fatalf("want pass, got %v", r.Problems)
	}
}

// With overlay's module BTF the CORE method must decide; a sensor that silently fell back to the
// inode offset would still pass its checks, and the matrix must not let that through.
func TestMethodExpectation(t *testing.T) {
	fellBack := passing("modern_ebpf")
	for i := range fellBack.Checks {
		fellBack.Checks[i].Method = "InodeOffset"
		fellBack.Checks[i].Message = "method InodeOffset (SingleMethod)"
	}
	b := boot(goodLog(t, map[string]v1alpha1.SelfTestStatus{"modern_ebpf": fellBack}, nil))
	present := true
	b.OverlayBTF = &present
	r := Evaluate(b, testDrivers, testChecks)
	var out bytes.Buffer
	if r.Passed() || WriteTable(&out, []KernelReport{r}) {
		t.Fatalf("a fallback to InodeOffset with module BTF present must fail")
	}
	if !strings.Contains(out.String(), "decided by InodeOffset, this boot must decide by CORE") {
		t.Errorf("report lacks the method failure:\n%s", out.String())
	}
	absent := false
	b.OverlayBTF = &absent
	if r := Evaluate(b, []string{"modern_ebpf"}, testChecks); r.Passed() {
		t.Fatalf("without module BTF the guest must also report it absent; got pass")
	}
}

// The selection engine's first driver must be one that passed on the kernel.
func TestDecisionMustPass(t *testing.T) {
	failedCheck := passing("modern_ebpf")
	failedCheck.Result = v1alpha1.SelfTestFailed
	failedCheck.Checks[0].Result = v1alpha1.SelfTestFailed
	statuses := map[string]v1alpha1.SelfTestStatus{"modern_ebpf": failedCheck}
	rcs := map[string]int{"modern_ebpf": 1}

	r := Evaluate(boot(logWith(t, statuses, rcs, probeResult(v1alpha1.OverlayTypesModule, "modern_ebpf", "ebpf"), nil)), testDrivers, testChecks)
	if r.Passed() || !strings.Contains(strings.Join(r.Problems, "\n"), "ranks modern_ebpf first") {
		t.Fatalf("a failing first driver must fail the kernel; problems %v", r.Problems)
	}
	if len(r.Worked) != 1 || r.Worked[0] != "ebpf" {
		t.Errorf("worked: %v, want [ebpf]", r.Worked)
	}
	r = Evaluate(boot(logWith(t, nil, nil, probeResult(v1alpha1.OverlayTypesModule, "kmod"), nil)), testDrivers, testChecks)
	if r.Passed() {
		t.Errorf("a decision for a driver the matrix does not run must fail")
	}
	var log bytes.Buffer
	log.Write(section(t, SectionInfo, 0, GuestInfo{KernelRelease: "x", OverlayModuleBTF: true}))
	for _, d := range testDrivers {
		log.Write(section(t, SelftestSection(d), 0, passing(d)))
	}
	log.Write(section(t, SectionDone, 0, Summary{}))
	if r := Evaluate(boot(log.Bytes()), testDrivers, testChecks); r.Passed() {
		t.Errorf("a kernel without probe output must fail: its decision is unknown")
	}
}

// The probe's overlay types fix the method: a kernel without overlay types must decide by the inode
// offset, one with them by CORE.
func TestMethodFromProbe(t *testing.T) {
	r := Evaluate(boot(logWith(t, nil, nil, probeResult(v1alpha1.OverlayTypesAbsent, "modern_ebpf", "ebpf"), nil)), testDrivers, testChecks)
	if r.Passed() {
		t.Fatalf("CORE decided where the probe found no overlay types; want failure")
	}
}

// From a kernel's real facts, the falco#3286 known issue must keep modern_ebpf from first place for
// a Falco release before the fix exactly where the probe finds no overlay types.
func TestFalco3286FromFacts(t *testing.T) {
	for _, tc := range []struct {
		types      string
		wantFirst  v1alpha1.Driver
		wantReason bool
	}{
		{v1alpha1.OverlayTypesAbsent, v1alpha1.DriverEBPF, true},
		{v1alpha1.OverlayTypesModule, v1alpha1.DriverModernEBPF, false},
	} {
		pr := probeResult(tc.types, "modern_ebpf", "ebpf")
		pr.Probe.Kernel.Release.Value, pr.Probe.Kernel.Version.Value = "6.1.0-56-amd64", "6.1.192"
		pr.Probe.Distro.ID, pr.Probe.Distro.VersionID = "debian", "12"
		d, err := falcoDecision(pr.Probe)
		if err != nil {
			t.Fatal(err)
		}
		if d.Driver != tc.wantFirst {
			t.Errorf("overlay types %s: Falco %s first driver %s, want %s (%+v)", tc.types, FalcoBefore3286, d.Driver, tc.wantFirst, d.Reasons)
		}
		if p := falco3286Problem(pr.Probe, d); p != "" {
			t.Errorf("overlay types %s: %s", tc.types, p)
		}
		// A decision that ignored the issue is caught.
		if tc.wantReason {
			ignored := selection.Decision{Driver: v1alpha1.DriverModernEBPF, Candidates: []v1alpha1.Driver{"modern_ebpf", "ebpf"}}
			if falco3286Problem(pr.Probe, ignored) == "" {
				t.Errorf("a decision that ranks modern_ebpf first without overlay types was not caught")
			}
		}
	}
}

// Every injected fault must fail the self-test, for the fault's reason.
func TestFaults(t *testing.T) {
	allLower := passing("modern_ebpf")
	allLower.Result = v1alpha1.SelfTestFailed
	for _, i := range []int{0, 2} {
		allLower.Checks[i].Result, allLower.Checks[i].Observed = v1alpha1.SelfTestFailed, "lower layer"
	}
	dropped := passing("modern_ebpf")
	dropped.Result = v1alpha1.SelfTestFailed
	for i := range dropped.Checks {
		dropped.Checks[i].Result, dropped.Checks[i].Observed = v1alpha1.SelfTestFailed, "no event within 2s"
	}
	notStarted := v1alpha1.SelfTestStatus{Driver: "modern_ebpf", Result: v1alpha1.SelfTestFailed, Reason: "SensorLoadFailed"}
	pr := probeResult(v1alpha1.OverlayTypesModule, "modern_ebpf", "ebpf")
	faults := []string{"all-lower", "drop-events"}

	b := boot(logWith(t, nil, nil, pr, map[string]v1alpha1.SelfTestStatus{"all-lower/modern_ebpf": allLower, "drop-events/modern_ebpf": dropped}))
	b.Faults = faults
	r := Evaluate(b, testDrivers, testChecks)
	var out bytes.Buffer
	if !r.Passed() || !WriteTable(&out, []KernelReport{r}) {
		t.Fatalf("caught faults must pass: %v %+v\n%s", r.Problems, r.Faults, out.String())
	}
	if !strings.Contains(out.String(), "all-lower    Caught  ExeUpperLayer,ExeCopyUp") || !strings.Contains(out.String(), "false passes: 0") {
		t.Errorf("fault table:\n%s", out.String())
	}

	for name, tc := range map[string]struct {
		faults map[string]v1alpha1.SelfTestStatus
		want   string
	}{
		"false pass":   {map[string]v1alpha1.SelfTestStatus{"all-lower/modern_ebpf": passing("modern_ebpf"), "drop-events/modern_ebpf": dropped}, "FalsePass"},
		"not started":  {map[string]v1alpha1.SelfTestStatus{"all-lower/modern_ebpf": allLower, "drop-events/modern_ebpf": notStarted}, "Inconclusive"},
		"wrong reason": {map[string]v1alpha1.SelfTestStatus{"all-lower/modern_ebpf": dropped, "drop-events/modern_ebpf": dropped}, "Inconclusive"},
		"missing":      {map[string]v1alpha1.SelfTestStatus{"drop-events/modern_ebpf": dropped}, "NoResult"},
	} {
		b := boot(logWith(t, nil, nil, pr, tc.faults))
		b.Faults = faults
		r := Evaluate(b, testDrivers, testChecks)
		var out bytes.Buffer
		if r.Passed() || WriteTable(&out, []KernelReport{r}) {
			t.Errorf("%s: want failure", name)
		}
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("%s: report lacks %q:\n%s", name, tc.want, out.String())
		}
	}
}
