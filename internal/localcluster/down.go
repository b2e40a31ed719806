package localcluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Down stops the cluster and puts the host back as it was recorded. It works on a Cluster that
// is running, half started, or only described by its state directory (see Cleanup).
func (c *Cluster) Down() error {
	c.logf("tearing down")
	var errs []error
	// The node first, so nothing restarts the containers killed next.
	for _, name := range []string{"kube-proxy", "kubelet"} {
		c.stopComponent(name)
	}
	if err := c.killContainers(); err != nil {
		errs = append(errs, err)
	}
	c.stopComponent("containerd")
	// Everything left in the node's network namespace: shims, the control plane, the holder.
	ns := c.netns()
	if ns != "" {
		killWhere(func(pid int) bool { return netnsOf(pid) == ns }, 10*time.Second)
	}
	for _, p := range c.procs {
		<-p.done
	}
	if c.holder != nil && c.holder.Process != nil {
		_ = c.holder.Process.Kill()
		_, _ = c.holder.Process.Wait()
	}
	if err := c.restoreHost(); err != nil {
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	if err == nil {
		c.logf("torn down; the host is as it was")
	}
	return err
}

// Cleanup tears down a cluster described only by its state directory (a run that was killed).
func Cleanup(cfg Config) error {
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	c := &Cluster{cfg: cfg}
	if _, err := os.Stat(c.dir("host.json")); err != nil {
		return nil // nothing to clean
	}
	return c.Down()
}

func (c *Cluster) netns() string {
	if c.holder != nil && c.holder.Process != nil {
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", c.holder.Process.Pid)); err == nil {
			return ns
		}
	}
	data, err := os.ReadFile(c.dir("state.json"))
	if err != nil {
		return ""
	}
	var st state
	if json.Unmarshal(data, &st) != nil {
		return ""
	}
	return st.NetNS
}

func (c *Cluster) stopComponent(name string) {
	for _, p := range c.procs {
		if p.name != name {
			continue
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// killContainers kills every process in the cgroups the cluster created (the pods' containers).
func (c *Cluster) killContainers() error {
	record := c.hostRecord()
	if record == nil {
		return nil
	}
	groups, err := newCgroups(record.Cgroups)
	if err != nil {
		return err
	}
	inGroups := map[int]bool{}
	for _, g := range groups {
		for _, pid := range cgroupPIDs(g) {
			inGroups[pid] = true
		}
	}
	killWhere(func(pid int) bool { return inGroups[pid] }, 10*time.Second)
	return nil
}

func (c *Cluster) hostRecord() *hostRecord {
	if c.record != nil {
		return c.record
	}
	r, err := loadHostRecord(c.dir("host.json"))
	if err != nil {
		return nil
	}
	c.record = r
	return r
}

// restoreHost undoes what the run changed on the host, from the record.
func (c *Cluster) restoreHost() error {
	record := c.hostRecord()
	if record == nil {
		return fmt.Errorf("no host record in %s: cannot tell what to restore", c.cfg.StateDir)
	}
	var errs []error
	// Mounts under the state directory (pod volumes, container root filesystems, network
	// namespaces) and any the runtime made in its default places.
	if err := unmountUnder(c.cfg.StateDir); err != nil {
		errs = append(errs, err)
	}
	for p, existed := range record.Paths {
		if !existed {
			if err := unmountUnder(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	groups, err := newCgroups(record.Cgroups)
	if err != nil {
		errs = append(errs, err)
	}
	for _, g := range groups {
		if pids := cgroupPIDs(g); len(pids) > 0 {
			errs = append(errs, fmt.Errorf("cgroup %s still holds processes %v", g, pids))
			continue
		}
		if err := removeCgroup(g); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := os.Stat("/sys/class/net/" + hostLink); err == nil {
		if out, err := exec.Command("ip", "link", "del", hostLink).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip link del %s: %v: %s", hostLink, err, out))
		}
	}
	for _, t := range nftTables() {
		if !slices.Contains(record.NFTables, t) {
			if out, err := exec.Command("nft", "delete", "table", strings.TrimPrefix(t, "table ")).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("nft delete %s: %v: %s", t, err, out))
			}
		}
	}
	restored, err := restoreSysctls(record.Sysctls)
	if err != nil {
		errs = append(errs, err)
	}
	if len(restored) > 0 {
		c.logf("restored sysctls %s", strings.Join(restored, " "))
	}
	if err := restorePropagation(record.Shared); err != nil {
		errs = append(errs, err)
	}
	for p, existed := range record.Paths {
		if existed {
			continue
		}
		if err := removeTree(p); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// Last, and only with nothing mounted below it: RemoveAll would follow a leftover bind
	// mount of the host's root into the host itself.
	return removeTree(c.cfg.StateDir)
}

// removeTree removes dir unless something is still mounted at or below it.
func removeTree(dir string) error {
	if _, err := os.Lstat(dir); err != nil {
		return nil
	}
	if points, err := mountsUnder(dir); err != nil || len(points) > 0 {
		return fmt.Errorf("not removing %s: still mounted %v (%v)", dir, points, err)
	}
	return os.RemoveAll(dir)
}

// nftTables lists the nftables tables of this process's network namespace ("table ip filter").
func nftTables() []string {
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		return nil
	}
	var tables []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			tables = append(tables, l)
		}
	}
	return tables
}

func netnsOf(pid int) string {
	ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	return ns
}

func allPIDs() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killWhere sends SIGTERM to the matching processes, then SIGKILL to those left after a grace
// period, and waits (up to timeout) for them to be gone.
func killWhere(match func(pid int) bool, timeout time.Duration) {
	signal := func(sig syscall.Signal) int {
		n := 0
		for _, pid := range allPIDs() {
			if match(pid) {
				_ = syscall.Kill(pid, sig)
				n++
			}
		}
		return n
	}
	if signal(syscall.SIGTERM) == 0 {
		return
	}
	deadline := time.Now().Add(timeout)
	grace := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		if time.Now().After(grace) {
			if signal(syscall.SIGKILL) == 0 {
				return
			}
		} else if !anyMatch(match) {
			return
		}
	}
}

func anyMatch(match func(pid int) bool) bool {
	for _, pid := range allPIDs() {
		if match(pid) {
			return true
		}
	}
	return false
}

// Leftovers lists what the cluster left on the host, compared with the record: a test asserts
// it is empty after Down. It must be called before the state directory is gone, so the caller
// keeps a copy of the record (SaveHostRecord) first.
func Leftovers(recordFile string) ([]string, error) {
	r, err := loadHostRecord(recordFile)
	if err != nil {
		return nil, err
	}
	var out []string
	changed, err := sysctlChanges(r.Sysctls)
	if err != nil {
		return nil, err
	}
	for k, v := range changed {
		out = append(out, fmt.Sprintf("sysctl %s changed (was %s)", k, v))
	}
	groups, err := newCgroups(r.Cgroups)
	if err != nil {
		return nil, err
	}
	for _, g := range groups {
		out = append(out, "cgroup "+g)
	}
	shared, err := newlyShared(r.Shared)
	if err != nil {
		return nil, err
	}
	for _, p := range shared {
		out = append(out, "mount "+p+" is shared (was private or absent)")
	}
	for p, existed := range r.Paths {
		if _, err := os.Lstat(p); err == nil && !existed {
			out = append(out, "path "+p+" was created")
		}
	}
	for _, t := range nftTables() {
		if !slices.Contains(r.NFTables, t) {
			out = append(out, "nftables "+t)
		}
	}
	if _, err := os.Stat("/sys/class/net/" + hostLink); err == nil {
		out = append(out, "link "+hostLink)
	}
	return out, nil
}

// SaveHostRecord copies the record of the host taken before the cluster started to path (to
// check for leftovers after Down).
func (c *Cluster) SaveHostRecord(path string) error {
	data, err := os.ReadFile(c.dir("host.json"))
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Clean(path), data, 0o600)
}
