// Command testsummary reads `go test -json` on stdin, prints the output of failed tests and the
// reason of every skipped test, and ends with one line "N passed, N failed, N skipped".
// With -fail-on-skip (set in CI) a skipped test fails the run: a test that could not run here
// proves nothing.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() {
	failOnSkip := flag.Bool("fail-on-skip", false, "treat skipped tests as failures")
	verbose := flag.Bool("v", false, "echo every test's output")
	flag.Parse()

	output := map[string]*strings.Builder{}
	var passed, failed, skipped []string
	var buildFailures []string
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1024*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// Build errors and other non-JSON lines from go test.
			fmt.Println(string(line))
			if strings.Contains(string(line), "[build failed]") || strings.HasPrefix(string(line), "#") {
				buildFailures = append(buildFailures, string(line))
			}
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "output":
			if output[key] == nil {
				output[key] = &strings.Builder{}
			}
			output[key].WriteString(e.Output)
			if *verbose {
				fmt.Print(e.Output)
			}
		case "pass":
			if e.Test != "" {
				passed = append(passed, key)
			} else {
				fmt.Printf("ok   %s %.1fs\n", e.Package, e.Elapsed)
			}
		case "fail":
			if e.Test != "" {
				failed = append(failed, key)
			} else {
				fmt.Printf("FAIL %s %.1fs\n", e.Package, e.Elapsed)
				if b := output[key]; b != nil && !strings.Contains(b.String(), "--- FAIL") {
					// A package that failed outside any test (panic, build error, TestMain).
					fmt.Print(b.String())
					failed = append(failed, key)
				}
			}
		case "skip":
			if e.Test != "" {
				skipped = append(skipped, key)
			}
		}
	}
	sort.Strings(failed)
	for _, k := range failed {
		if b := output[k]; b != nil && !*verbose {
			fmt.Printf("\n--- output of %s\n%s", k, b.String())
		}
	}
	for _, k := range skipped {
		reason := ""
		if b := output[k]; b != nil {
			reason = strings.TrimSpace(b.String())
		}
		fmt.Printf("SKIP %s\n    %s\n", k, strings.ReplaceAll(reason, "\n", "\n    "))
	}
	nFailed := len(failed) + len(buildFailures)
	fmt.Printf("\n%d passed, %d failed, %d skipped\n", len(passed), nFailed, len(skipped))
	if nFailed > 0 {
		os.Exit(1)
	}
	if *failOnSkip && len(skipped) > 0 {
		fmt.Println("skipped tests fail this run (CI): each skip above says what it needed")
		os.Exit(1)
	}
	if len(passed) == 0 {
		fmt.Println("no test ran")
		os.Exit(1)
	}
}
