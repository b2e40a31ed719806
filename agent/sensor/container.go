package sensor

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Container names the container a process runs in, read from its cgroup path the way Falco
// does: the last path element that is a 64-hex container ID (cgroupfs: /kubepods/<qos>/pod<uid>/<id>;
// systemd: .../cri-containerd-<id>.scope, docker-<id>.scope, crio-<id>.scope), and the pod UID
// from the pod<uid> element. A process outside any container is "host".
type Container struct {
	// ID is the full container ID, "host" outside containers, "" when the process was gone.
	ID string
	// PodUID is the Kubernetes pod's UID when the cgroup path names one.
	PodUID string
}

// ShortID is the 12-character form Falco prints as container.id.
func (c Container) ShortID() string {
	if len(c.ID) == 64 {
		return c.ID[:12]
	}
	return c.ID
}

// CgroupNames are the names of a task's cgroup and of its parent, read in the kernel at the exec
// (bpf/exec.bpf.c): a runtime names the cgroup after the container and its parent after the pod.
type CgroupNames struct {
	Leaf, Parent string
}

// ContainerOfEvent names the container of ev's process: from the cgroup names the kernel read at
// the exec, which hold even when the process is gone by the time the event is read (a dropped
// binary that runs for a millisecond), else from /proc/<tgid>/cgroup under procRoot.
func ContainerOfEvent(procRoot string, ev Event) Container {
	if c, ok := containerInPath(ev.Cgroup.Parent + "/" + ev.Cgroup.Leaf); ok {
		return c
	}
	if ev.Cgroup.Leaf != "" {
		// The kernel named a cgroup that is no container's: a host process, or a container whose
		// runtime names cgroups otherwise; /proc may know more while the process lives.
		if c := ContainerOf(procRoot, ev.TGID); c.ID != "" {
			return c
		}
		return Container{ID: "host"}
	}
	return ContainerOf(procRoot, ev.TGID)
}

// ContainerOf reads /proc/<tgid>/cgroup under procRoot ("/proc" on a host, "/host/proc" in a pod).
func ContainerOf(procRoot string, tgid uint32) Container {
	data, err := os.ReadFile(filepath.Join(procRoot, fmt.Sprint(tgid), "cgroup"))
	if err != nil {
		return Container{} // exited before we looked: unknown, not "host"
	}
	return parseCgroup(data)
}

func parseCgroup(data []byte) Container {
	s := bufio.NewScanner(bytes.NewReader(data))
	for s.Scan() {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(s.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if c, ok := containerInPath(parts[2]); ok {
			return c
		}
	}
	return Container{ID: "host"}
}

func containerInPath(path string) (Container, bool) {
	var c Container
	for _, el := range strings.Split(path, "/") {
		el = strings.TrimSuffix(el, ".scope")
		el = strings.TrimSuffix(el, ".slice")
		if i := strings.LastIndexByte(el, '-'); i >= 0 && isContainerID(el[i+1:]) {
			el = el[i+1:]
		}
		switch {
		case isContainerID(el):
			c.ID = el
		case strings.Contains(el, "pod"):
			// kubepods-besteffort-pod<uid with _>.slice or pod<uid>
			uid := el[strings.LastIndex(el, "pod")+3:]
			if len(uid) == 36 {
				c.PodUID = strings.ReplaceAll(uid, "_", "-")
			}
		}
	}
	return c, c.ID != ""
}

func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}
