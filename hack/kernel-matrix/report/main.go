// Command report reads the kernel matrix's console logs and prints the table: kernel × driver ×
// check × result × detection method, boot and run time per kernel, and for every failure the reason
// and the end of the console. It exits 1 unless every cell on every kernel passed.
//
// Usage: report -drivers modern_ebpf,ebpf -checks ExeUpperLayer,... [-markdown FILE] MANIFEST
//
// MANIFEST has one boot a line, tab-separated: kernel, nonce, wall seconds, qemu exit code, log path,
// then optional key=value fields:
//
//	overlay-btf=true|false   whether the guest must have overlay's module BTF
//	faults=all-lower,...     sensor faults the guest injected (each run must fail the self-test)
//	fault-drivers=ebpf,...   the drivers the faults ran with (default: the first driver)
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/driverpilot/driverpilot/hack/kernel-matrix/matrix"
)

func main() {
	drivers := flag.String("drivers", "modern_ebpf,ebpf", "drivers every kernel must pass, comma-separated")
	checks := flag.String("checks", "ExeUpperLayer,ExeLowerLayer,ExeCopyUp,ExeFromMemfd", "checks every driver must pass, comma-separated")
	markdown := flag.String("markdown", "", "also write the kernel table as Markdown to FILE (the README's table)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: report [-drivers LIST] [-checks LIST] MANIFEST")
		os.Exit(2)
	}
	boots, err := readManifest(flag.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "report: %v\n", err)
		os.Exit(2)
	}
	var reports []matrix.KernelReport
	for _, b := range boots {
		reports = append(reports, matrix.Evaluate(b, strings.Split(*drivers, ","), strings.Split(*checks, ",")))
	}
	if *markdown != "" {
		var b strings.Builder
		matrix.WriteMarkdown(&b, reports)
		if err := os.WriteFile(*markdown, []byte(b.String()), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "report: %v\n", err)
			os.Exit(2)
		}
	}
	if !matrix.WriteTable(os.Stdout, reports) {
		fmt.Println("\nkernel matrix: FAILED")
		os.Exit(1)
	}
	msg := "every check passed on every kernel"
	for _, r := range reports {
		if len(r.Faults) > 0 {
			msg += ", and every injected fault failed the self-test"
			break
		}
	}
	fmt.Println("\nkernel matrix: " + msg)
}

func readManifest(path string) ([]matrix.Boot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var boots []matrix.Boot
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) < 5 {
			return nil, fmt.Errorf("%s:%d: want at least 5 tab-separated fields, got %d", path, n, len(fields))
		}
		var (
			overlayBTF           *bool
			faults, faultDrivers []string
		)
		for _, opt := range fields[5:] {
			if opt == "" {
				continue
			}
			k, v, _ := strings.Cut(opt, "=")
			switch k {
			case "overlay-btf":
				b, err := strconv.ParseBool(v)
				if err != nil {
					return nil, fmt.Errorf("%s:%d: want overlay-btf=true|false, got %q", path, n, opt)
				}
				overlayBTF = &b
			case "faults":
				faults = splitList(v)
			case "fault-drivers":
				faultDrivers = splitList(v)
			default:
				return nil, fmt.Errorf("%s:%d: unknown field %q (known: overlay-btf, faults, fault-drivers)", path, n, opt)
			}
		}
		wall, err := strconv.ParseFloat(fields[2], 64)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: wall seconds: %w", path, n, err)
		}
		rc, err := strconv.Atoi(fields[3])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: qemu exit code: %w", path, n, err)
		}
		log, err := os.ReadFile(fields[4])
		if err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		boots = append(boots, matrix.Boot{
			Kernel: fields[0], Nonce: fields[1], Wall: time.Duration(wall * float64(time.Second)), QemuRC: rc, Log: log, OverlayBTF: overlayBTF,
			Faults: faults, FaultDrivers: faultDrivers,
		})
	}
	return boots, sc.Err()
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
