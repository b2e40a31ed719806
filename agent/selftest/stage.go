package selftest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Filesystem magics (statfs f_type) the staging cares about.
const (
	overlayfsMagic = 0x794c7630
	tmpfsMagic     = 0x01021994
	ramfsMagic     = 0x858458f6
)

// fsName names a statfs magic for messages.
func fsName(magic int64) string {
	switch magic {
	case overlayfsMagic:
		return "overlayfs"
	case tmpfsMagic:
		return "tmpfs"
	case ramfsMagic:
		return "ramfs"
	case 0xef53:
		return "ext4"
	case 0x58465342:
		return "xfs"
	case 0x9123683e:
		return "btrfs"
	}
	return fmt.Sprintf("0x%x", magic)
}

// statfsMagic returns the filesystem type of path.
func statfsMagic(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(st.Type), nil
}

// overlayStage is a private overlay mount: lower, upper and work directories and the merged
// mount point, all under one temporary directory.
type overlayStage struct {
	base, lower, upper, work, merged string
	// backing describes the filesystem the layers live on, for messages.
	backing     string
	tmpfsBase   bool
	overlayUp   bool
	lowerBinary []string
}

// newOverlayStage creates the directories under workdir, writes the lower-layer binaries (an
// overlay's lower layer must not change while mounted) and mounts the overlay. On error
// everything created so far is removed.
func newOverlayStage(workdir string, helper []byte, lowerNames []string) (st *overlayStage, err error) {
	if err := os.MkdirAll(workdir, 0o755); err != nil {
		return nil, fmt.Errorf("create workdir: %w", err)
	}
	base, err := os.MkdirTemp(workdir, "driverpilot-selftest-")
	if err != nil {
		return nil, fmt.Errorf("create staging directory: %w", err)
	}
	// overlay's mount options are comma- and colon-separated.
	if strings.ContainsAny(base, ",:\\") {
		os.Remove(base)
		return nil, fmt.Errorf("staging directory %q contains ',', ':' or '\\', which overlay options cannot carry", base)
	}
	st = &overlayStage{base: base}
	defer func() {
		if err != nil {
			err = errors.Join(err, st.close())
			st = nil
		}
	}()

	magic, err := statfsMagic(base)
	if err != nil {
		return st, err
	}
	st.backing = fsName(magic)
	// An upper layer cannot live on overlayfs, and ramfs (an initramfs root) lacks what overlay
	// wants from an upper layer; a private tmpfs serves both cases.
	if magic == overlayfsMagic || magic == ramfsMagic {
		if err := unix.Mount("tmpfs", base, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700,size=16m"); err != nil {
			return st, fmt.Errorf("mount tmpfs on %s (backing %s): %w", base, st.backing, err)
		}
		st.tmpfsBase = true
		st.backing = "tmpfs (mounted over " + st.backing + ")"
	}

	st.lower = filepath.Join(base, "lower")
	st.upper = filepath.Join(base, "upper")
	st.work = filepath.Join(base, "work")
	st.merged = filepath.Join(base, "merged")
	for _, d := range []string{st.lower, st.upper, st.work, st.merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return st, fmt.Errorf("create %s: %w", d, err)
		}
	}
	for _, name := range lowerNames {
		if err := os.WriteFile(filepath.Join(st.lower, name), helper, 0o755); err != nil {
			return st, fmt.Errorf("write lower binary: %w", err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", st.lower, st.upper, st.work)
	if err := unix.Mount("overlay", st.merged, "overlay", 0, opts); err != nil {
		return st, fmt.Errorf("mount overlay on %s (layers on %s): %w%s", st.merged, st.backing, err, mountHint(err))
	}
	st.overlayUp = true
	return st, nil
}

// mountHint says which capability an overlay mount error points to. Overlay creates its work
// directory (work/work) with mode 0000, whatever mode the self-test gave the directories, and
// creates files in it with the mounter's credentials, when mounting and on every copy-up: root
// without CAP_DAC_OVERRIDE gets EACCES there. The mount itself takes CAP_SYS_ADMIN.
func mountHint(err error) string {
	switch {
	case errors.Is(err, unix.EACCES):
		return " (overlayfs writes into its mode-0000 work directory with the mounter's credentials: that takes CAP_DAC_OVERRIDE)"
	case errors.Is(err, unix.EPERM):
		return " (mounting takes CAP_SYS_ADMIN, and a seccomp or AppArmor profile that allows mount)"
	}
	return ""
}

// path returns the merged (container's view) path of name.
func (s *overlayStage) path(name string) string { return filepath.Join(s.merged, name) }

// inUpper reports whether name exists in the upper directory (it was created or copied up).
func (s *overlayStage) inUpper(name string) bool {
	_, err := os.Lstat(filepath.Join(s.upper, name))
	return err == nil
}

// writeUpper creates name through the merged directory, which puts it on the upper layer.
func (s *overlayStage) writeUpper(name string, helper []byte) error {
	if err := os.WriteFile(s.path(name), helper, 0o755); err != nil {
		return fmt.Errorf("write upper binary: %w", err)
	}
	if !s.inUpper(name) {
		return fmt.Errorf("%s written through the overlay is not in the upper directory", name)
	}
	return nil
}

// copyUp opens a lower binary for writing through the merged directory and appends a byte,
// which makes overlay copy it up to the upper layer.
func (s *overlayStage) copyUp(name string) error {
	if s.inUpper(name) {
		return fmt.Errorf("%s is already in the upper directory before the copy-up", name)
	}
	f, err := os.OpenFile(s.path(name), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open lower binary for writing: %w", err)
	}
	_, werr := f.Write([]byte{0})
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("modify lower binary: %w", err)
	}
	if !s.inUpper(name) {
		return fmt.Errorf("%s was not copied up after a write", name)
	}
	return nil
}

// close unmounts the overlay (lazily if it is busy) and the private tmpfs, and removes the
// staging directory.
func (s *overlayStage) close() error {
	var errs []error
	if s.overlayUp {
		errs = append(errs, unmount(s.merged))
		s.overlayUp = false
	}
	if s.tmpfsBase {
		errs = append(errs, unmount(s.base))
		s.tmpfsBase = false
	}
	if err := os.RemoveAll(s.base); err != nil {
		errs = append(errs, fmt.Errorf("remove staging directory: %w", err))
	}
	return errors.Join(errs...)
}

// unmount unmounts target, detaching it lazily as a last resort when it is busy.
func unmount(target string) error {
	err := unix.Unmount(target, 0)
	if err == nil || errors.Is(err, unix.EINVAL) { // EINVAL: not a mount point any more
		return nil
	}
	if derr := unix.Unmount(target, unix.MNT_DETACH); derr != nil {
		return fmt.Errorf("unmount %s (then lazily): %w", target, errors.Join(err, derr))
	}
	return nil
}
