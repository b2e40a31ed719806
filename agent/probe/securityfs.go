package probe

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// MountSecurityFS mounts securityfs at <root>/sys/kernel/security when nothing is mounted there
// (the directory is empty), so the lockdown mode can be read. The returned function unmounts what
// this call mounted and nothing else; it is a no-op when securityfs was already there.
func MountSecurityFS(root string) (unmount func() error, err error) {
	noop := func() error { return nil }
	dir := (&Prober{Root: root}).path("/sys/kernel/security")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return noop, fmt.Errorf("read %s: %w", dir, err)
	}
	if len(entries) > 0 {
		return noop, nil
	}
	if err := unix.Mount("none", dir, "securityfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return noop, fmt.Errorf("mount securityfs at %s: %w", dir, err)
	}
	return func() error {
		if err := unix.Unmount(dir, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount securityfs at %s: %w", dir, err)
		}
		return nil
	}, nil
}
