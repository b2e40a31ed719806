package probe

import (
	"fmt"

	"golang.org/x/sys/unix"
)

type utsname struct{ release, machine string }

// uname asks the running kernel; used only when the root describes it.
func uname() (utsname, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return utsname{}, fmt.Errorf("uname: %w", err)
	}
	return utsname{release: unix.ByteSliceToString(u.Release[:]), machine: unix.ByteSliceToString(u.Machine[:])}, nil
}
