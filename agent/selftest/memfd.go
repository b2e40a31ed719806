package selftest

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// newMemfd returns a memfd named name holding the helper binary. Kernels since 6.3 want
// MFD_EXEC for an executable memfd when vm.memfd_noexec is set; older ones reject the flag.
func newMemfd(name string, helper []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) {
		fd, err = unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	}
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	if _, err := f.Write(helper); err != nil {
		f.Close()
		return nil, fmt.Errorf("write memfd: %w", err)
	}
	return f, nil
}
