package probe

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// Lockdown modes as the kernel spells them.
const (
	LockdownNone            = "none"
	LockdownIntegrity       = "integrity"
	LockdownConfidentiality = "confidentiality"
)

// ErrLockdownFormat marks a lockdown file without exactly one bracketed, known mode.
var ErrLockdownFormat = errors.New("unexpected lockdown file format")

// ParseLockdown reads the active mode from the lockdown file's contents, which list the modes with
// the active one in brackets: "none [integrity] confidentiality".
func ParseLockdown(s string) (string, error) {
	active := ""
	for _, field := range strings.Fields(s) {
		if len(field) > 2 && field[0] == '[' && field[len(field)-1] == ']' {
			if active != "" {
				return "", fmt.Errorf("%q: two active modes: %w", s, ErrLockdownFormat)
			}
			active = field[1 : len(field)-1]
		}
	}
	switch active {
	case LockdownNone, LockdownIntegrity, LockdownConfidentiality:
		return active, nil
	case "":
		return "", fmt.Errorf("%q: no active mode: %w", s, ErrLockdownFormat)
	}
	return "", fmt.Errorf("%q: unknown mode %q: %w", s, active, ErrLockdownFormat)
}

// lockdown reads the mode from securityfs. securityfs is often not mounted (then the mode is
// Unknown: an unreadable file is not "none"); a mounted securityfs without a lockdown file means
// the kernel has no lockdown LSM, which is "none".
func (p *Prober) lockdown() v1alpha1.StringFact {
	data, src, err := p.readFile("/sys/kernel/security/lockdown")
	if err == nil {
		mode, perr := ParseLockdown(string(data))
		if perr != nil {
			return stringErr(fmt.Errorf("%s: %w", src, perr))
		}
		return stringFact(mode, src)
	}
	if errors.Is(err, fs.ErrNotExist) {
		entries, derr := os.ReadDir(p.path("/sys/kernel/security"))
		if derr == nil && len(entries) > 0 {
			return stringFact(LockdownNone, "securityfs mounted without a lockdown file: kernel built without the lockdown LSM")
		}
		return stringErr(fmt.Errorf("read lockdown: securityfs not mounted at %s (mount -t securityfs none %[1]s to read it)",
			p.path("/sys/kernel/security")))
	}
	return stringErr(fmt.Errorf("read lockdown: %w", err))
}
