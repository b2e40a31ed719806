package localcluster

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// hostRecord is what the cluster may change on the host, read before it starts. It is written to
// the state directory so a later `down` can restore the host after a crash.
type hostRecord struct {
	// Shared lists the mount points that were shared ("/" is private on these machines); every
	// other mount is made private again on teardown, including one made during the run, which
	// inherits "shared" from its parent while "/" is rshared.
	Shared []string `json:"shared"`
	// Sysctls holds every writable sysctl of the host's namespaces and its value.
	Sysctls map[string]string `json:"sysctls"`
	// Cgroups lists, per cgroup v1 hierarchy (or the v2 root), its top-level groups.
	Cgroups map[string][]string `json:"cgroups"`
	// Paths lists which of the well-known runtime paths existed.
	Paths map[string]bool `json:"paths"`
	// NFTables lists the root network namespace's nftables tables.
	NFTables []string `json:"nftables"`
}

// runtimePaths are the places a kubelet, containerd or CNI plugin writes by default. The cluster
// points them all into its state directory; Down removes any of them the run created anyway.
var runtimePaths = []string{
	"/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/run/containerd", "/var/lib/containerd",
	"/var/lib/cni", "/etc/cni", "/opt/cni", "/run/netns", "/etc/kubernetes", "/run/runc", "/run/kubernetes",
	"/opt/containerd", "/run/nri", "/etc/nri", "/opt/nri", "/etc/cdi", "/run/cdi", "/etc/containerd",
}

// volatileSysctls change on their own; they are neither compared nor restored.
var volatileSysctls = []string{
	"kernel/ns_last_pid", "kernel/perf_event_max_sample_rate", "kernel/random/", "fs/binfmt_misc/",
	"net/ipv4/route/flush", "net/ipv6/route/flush", "vm/drop_caches", "vm/compact_memory",
	"kernel/sched_domain/", "net/ipv4/conf/dp-", "net/ipv6/conf/dp-", "net/ipv4/neigh/dp-", "net/ipv6/neigh/dp-",
}

func recordHost() (*hostRecord, error) {
	r := &hostRecord{Paths: map[string]bool{}}
	var err error
	if r.Shared, err = sharedMounts(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	if r.Sysctls, err = readSysctls(); err != nil {
		return nil, fmt.Errorf("read sysctls: %w", err)
	}
	if r.Cgroups, err = topCgroups(); err != nil {
		return nil, fmt.Errorf("read cgroups: %w", err)
	}
	for _, p := range runtimePaths {
		_, err := os.Lstat(p)
		r.Paths[p] = err == nil
	}
	r.NFTables = nftTables()
	return r, nil
}

func (r *hostRecord) save(path string) error {
	data, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

func loadHostRecord(path string) (*hostRecord, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := &hostRecord{}
	return r, json.Unmarshal(data, r)
}

// mountInfo is one line of /proc/self/mountinfo.
type mountInfo struct {
	Point  string
	FSType string
	Shared bool
}

func mounts() ([]mountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountInfo
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		// id parent major:minor root point options [optional...] - fstype source super
		pre, post, ok := strings.Cut(s.Text(), " - ")
		fields := strings.Fields(pre)
		if !ok || len(fields) < 6 {
			continue
		}
		m := mountInfo{Point: unescapeMount(fields[4])}
		for _, opt := range fields[6:] {
			if strings.HasPrefix(opt, "shared:") {
				m.Shared = true
			}
		}
		if pf := strings.Fields(post); len(pf) > 0 {
			m.FSType = pf[0]
		}
		out = append(out, m)
	}
	return out, s.Err()
}

// unescapeMount decodes the octal escapes mountinfo uses for spaces and the like.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func sharedMounts() ([]string, error) {
	ms, err := mounts()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		if m.Shared {
			out = append(out, m.Point)
		}
	}
	return out, nil
}

// makeRShared makes "/" and every mount below it shared, so the agent's HostToContainer mount of
// the host root sees what is mounted later (as kind's node image does).
func makeRShared() error {
	return unix.Mount("", "/", "", unix.MS_SHARED|unix.MS_REC, "")
}

// newlyShared lists the mounts that are shared now but were not recorded as shared.
func newlyShared(shared []string) ([]string, error) {
	now, err := sharedMounts()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range now {
		if !slices.Contains(shared, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// restorePropagation makes private again every mount that was not shared.
func restorePropagation(shared []string) error {
	points, err := newlyShared(shared)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range points {
		if err := unix.Mount("", p, "", unix.MS_PRIVATE, ""); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("make %s private: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	ms, err := mounts()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			out = append(out, m.Point)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// unmountUnder detaches every mount at or below dir.
func unmountUnder(dir string) error {
	var errs []error
	for range 5 { // stacked mounts on one point need one unmount each
		points, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(points) == 0 {
			return nil
		}
		errs = nil
		for _, p := range points {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
			}
		}
	}
	if points, _ := mountsUnder(dir); len(points) > 0 {
		errs = append(errs, fmt.Errorf("still mounted under %s: %s", dir, strings.Join(points, ", ")))
	}
	return errors.Join(errs...)
}

func isVolatileSysctl(rel string) bool {
	for _, v := range volatileSysctls {
		if strings.HasPrefix(rel, v) {
			return true
		}
	}
	return false
}

// readSysctls reads every writable, readable sysctl of this process's namespaces.
func readSysctls() (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir("/proc/sys", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		rel := strings.TrimPrefix(path, "/proc/sys/")
		info, err := d.Info()
		if err != nil || info.Mode().Perm()&0o200 == 0 || info.Mode().Perm()&0o444 == 0 || isVolatileSysctl(rel) {
			return nil
		}
		v, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		out[rel] = strings.TrimSpace(string(v))
		return nil
	})
	return out, err
}

// sysctlChanges returns the recorded sysctls whose value differs now, with the recorded value.
func sysctlChanges(before map[string]string) (map[string]string, error) {
	now, err := readSysctls()
	if err != nil {
		return nil, err
	}
	changed := map[string]string{}
	for k, v := range before {
		if cur, ok := now[k]; ok && cur != v {
			changed[k] = v
		}
	}
	return changed, nil
}

// restoreSysctls writes back every recorded sysctl that changed; it returns what it restored.
func restoreSysctls(before map[string]string) ([]string, error) {
	changed, err := sysctlChanges(before)
	if err != nil {
		return nil, err
	}
	var restored []string
	var errs []error
	for k, v := range changed {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, v, err))
			continue
		}
		restored = append(restored, k+"="+v)
	}
	sort.Strings(restored)
	return restored, errors.Join(errs...)
}

// cgroupRoots lists the mounted cgroup hierarchies (v1 controllers, or the v2 root).
func cgroupRoots() ([]string, error) {
	ms, err := mounts()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		if m.FSType == "cgroup" || m.FSType == "cgroup2" {
			out = append(out, m.Point)
		}
	}
	return out, nil
}

func topCgroups() (map[string][]string, error) {
	roots, err := cgroupRoots()
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, root := range roots {
		entries, err := os.ReadDir(root)
		if err != nil {
			continue
		}
		names := []string{}
		for _, e := range entries {
			if e.IsDir() {
				names = append(names, e.Name())
			}
		}
		out[root] = names
	}
	return out, nil
}

// newCgroups lists the top-level cgroups created since the record.
func newCgroups(before map[string][]string) ([]string, error) {
	now, err := topCgroups()
	if err != nil {
		return nil, err
	}
	var out []string
	for root, names := range now {
		old := map[string]bool{}
		for _, n := range before[root] {
			old[n] = true
		}
		for _, n := range names {
			if !old[n] {
				out = append(out, filepath.Join(root, n))
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// cgroupPIDs lists the processes in a cgroup and all its descendants.
func cgroupPIDs(dir string) []int {
	var pids []int
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(data)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// removeCgroup removes a cgroup tree, deepest first (cgroup directories are removed with rmdir).
func removeCgroup(dir string) error {
	var dirs []string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	var errs []error
	for _, d := range dirs {
		if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
