package matrix

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// markerTag starts every marker line; a nonce and the section name follow it.
const markerTag = "@@DPMATRIX"

// Section names the guest prints.
const (
	// SectionInfo holds the guest's GuestInfo (kernel, modules loaded, BTF) as JSON.
	SectionInfo = "info"
	// SectionDone holds the guest's Summary as JSON; it is the last thing printed before power-off.
	SectionDone = "done"
	// SectionProbe holds the stdout of `driverpilot probe -o json`: the probe's facts and the
	// selection engine's decision for this kernel.
	SectionProbe = "probe"
	// selftestPrefix + driver holds the stdout of `driverpilot selftest --driver <driver> -o json`.
	selftestPrefix = "selftest/"
	// faultPrefix + fault + "/" + driver holds the same for a run with an injected sensor fault.
	faultPrefix = "fault/"
)

// SelftestSection is the section name for one driver's self-test output.
func SelftestSection(driver string) string { return selftestPrefix + driver }

// FaultSection is the section name for one driver's self-test output with an injected fault.
func FaultSection(fault, driver string) string { return faultPrefix + fault + "/" + driver }

// Errors a parsed section can carry.
var (
	// ErrCorrupt means the body's length or CRC-32 did not match: the console output was torn.
	ErrCorrupt = errors.New("section body corrupt on the console")
	// ErrTruncated means a BEGIN marker had no END: the guest died or was killed while printing.
	ErrTruncated = errors.New("section has no END marker")
)

// Section is one marked block found in a console log.
type Section struct {
	// Name is the section name, for example "info" or "selftest/ebpf".
	Name string
	// RC is the exit code the guest recorded for the section (0 for info sections).
	RC int
	// Body is the text between the markers, with the console's CR LF turned back into LF.
	Body []byte
	// Err is ErrCorrupt or ErrTruncated (wrapped with detail) when the section cannot be trusted.
	Err error
}

// canonical makes sure a body ends with exactly the newline the END marker follows.
func canonical(body []byte) []byte {
	if len(body) == 0 || body[len(body)-1] != '\n' {
		return append(append([]byte(nil), body...), '\n')
	}
	return body
}

// BeginLine is the marker that opens a section.
func BeginLine(nonce, name string) string {
	return fmt.Sprintf("%s %s BEGIN %s@@", markerTag, nonce, name)
}

// EndLine is the marker that closes a section; it carries the exit code and the body's checksum.
func EndLine(nonce, name string, rc int, body []byte) string {
	b := canonical(body)
	return fmt.Sprintf("%s %s END %s rc=%d len=%d crc32=%08x@@", markerTag, nonce, name, rc, len(b), crc32.ChecksumIEEE(b))
}

// WriteSection prints one complete section to w in a single write, so that nothing the guest
// prints itself can land inside it.
func WriteSection(w io.Writer, nonce, name string, rc int, body []byte) error {
	if strings.ContainsAny(name, " \n@") || strings.ContainsAny(nonce, " \n@") || name == "" || nonce == "" {
		return fmt.Errorf("bad section name %q or nonce %q", name, nonce)
	}
	if bytes.Contains(body, []byte(markerTag)) {
		return fmt.Errorf("section %s: body contains the marker tag", name)
	}
	b := canonical(body)
	var buf bytes.Buffer
	buf.WriteString("\n" + BeginLine(nonce, name) + "\n")
	buf.Write(b)
	buf.WriteString(EndLine(nonce, name, rc, b) + "\n")
	_, err := w.Write(buf.Bytes())
	return err
}

// kernelLine matches a printk line as the console shows it ("[    3.141592] overlayfs: ...").
// Such lines can land between the lines of a section; they are dropped before the checksum test.
var kernelLine = regexp.MustCompile(`^\[\s*\d+\.\d+\] `)

var (
	beginRE = regexp.MustCompile(`@@DPMATRIX (\S+) BEGIN (\S+)@@`)
	endRE   = regexp.MustCompile(`@@DPMATRIX (\S+) END (\S+) rc=(-?\d+) len=(\d+) crc32=([0-9a-f]{8})@@`)
)

// Parse finds the sections for nonce in a console log, in the order they appear. Markers with another
// nonce are ignored. A section printed twice keeps its last copy.
func Parse(log []byte, nonce string) []Section {
	var (
		out     []Section
		index   = map[string]int{}
		open    *Section
		body    bytes.Buffer
		dropped int
	)
	add := func(s Section) {
		if i, ok := index[s.Name]; ok {
			out[i] = s
			return
		}
		index[s.Name] = len(out)
		out = append(out, s)
	}
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := strings.TrimRight(strings.ReplaceAll(sc.Text(), "\r", ""), "\n")
		if m := beginRE.FindStringSubmatch(line); m != nil && m[1] == nonce {
			if open != nil {
				open.Body = append([]byte(nil), body.Bytes()...)
				open.Err = fmt.Errorf("%w: %s began again before it ended", ErrTruncated, open.Name)
				add(*open)
			}
			open = &Section{Name: m[2]}
			body.Reset()
			dropped = 0
			continue
		}
		if m := endRE.FindStringSubmatch(line); m != nil && m[1] == nonce {
			if open == nil || open.Name != m[2] {
				continue // an END without its BEGIN: the BEGIN was torn; the section stays missing
			}
			open.RC, _ = strconv.Atoi(m[3])
			wantLen, _ := strconv.Atoi(m[4])
			wantCRC, _ := strconv.ParseUint(m[5], 16, 32)
			open.Body = append([]byte(nil), body.Bytes()...)
			if len(open.Body) != wantLen || crc32.ChecksumIEEE(open.Body) != uint32(wantCRC) {
				open.Err = fmt.Errorf("%w: %s: got %d bytes crc32=%08x, want %d bytes crc32=%08x (%d kernel lines dropped)",
					ErrCorrupt, open.Name, len(open.Body), crc32.ChecksumIEEE(open.Body), wantLen, wantCRC, dropped)
			}
			add(*open)
			open = nil
			continue
		}
		if open == nil {
			continue
		}
		if kernelLine.MatchString(line) {
			dropped++
			continue
		}
		body.WriteString(line)
		body.WriteByte('\n')
	}
	if open != nil {
		open.Body = append([]byte(nil), body.Bytes()...)
		open.Err = fmt.Errorf("%w: %s", ErrTruncated, open.Name)
		add(*open)
	}
	return out
}

// ansiEscape matches the terminal control sequences SeaBIOS and qemu print (clear screen, reset).
var ansiEscape = regexp.MustCompile(`\x1b(\[[0-9;?]*[A-Za-z]|[A-Za-z])`)

// Tail returns the last n non-empty lines of a console log, with CRs and terminal escapes removed.
func Tail(log []byte, n int) []string {
	lines := strings.Split(ansiEscape.ReplaceAllString(strings.ReplaceAll(string(log), "\r", ""), ""), "\n")
	var out []string
	for i := len(lines) - 1; i >= 0 && len(out) < n; i-- {
		if strings.TrimSpace(lines[i]) != "" {
			out = append(out, lines[i])
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}
