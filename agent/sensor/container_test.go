package sensor

import (
	"os"
	"testing"
)

func TestParseCgroup(t *testing.T) {
	const id = "4f1c2b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a"
	const uid = "0d6a2c31-5b7e-4f19-9c1a-7e2b3d4f5a6b"
	for name, tc := range map[string]struct {
		cgroup string
		want   Container
	}{
		"cgroup v1 cgroupfs": {
			"12:pids:/kubepods/besteffort/pod" + uid + "/" + id + "\n11:memory:/kubepods/besteffort/pod" + uid + "/" + id + "\n",
			Container{ID: id, PodUID: uid},
		},
		"cgroup v2 systemd": {
			"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d6a2c31_5b7e_4f19_9c1a_7e2b3d4f5a6b.slice/cri-containerd-" + id + ".scope\n",
			Container{ID: id, PodUID: uid},
		},
		"docker":                         {"0::/system.slice/docker-" + id + ".scope\n", Container{ID: id}},
		"host":                           {"12:pids:/\n0::/init.scope\n", Container{ID: "host"}},
		"a 64-char name that is not hex": {"0::/" + "zz" + id[2:] + "\n", Container{ID: "host"}},
	} {
		t.Run(name, func(t *testing.T) {
			if got := parseCgroup([]byte(tc.cgroup)); got != tc.want {
				t.Errorf("parseCgroup = %+v, want %+v", got, tc.want)
			}
		})
	}
	if got := (Container{ID: id}).ShortID(); got != id[:12] {
		t.Errorf("ShortID = %q", got)
	}
}

func TestContainerOfThisProcess(t *testing.T) {
	// This test process runs on the host (or in CI's own container): whatever it is, a live
	// process resolves to something, and a process that does not exist to unknown.
	if got := ContainerOf("/proc", uint32(os.Getpid())); got.ID != "host" && !isContainerID(got.ID) {
		t.Errorf("ContainerOf(self) = %+v, want host or a container ID", got)
	}
	if got := ContainerOf("/proc", 1<<30); got.ID != "" {
		t.Errorf("ContainerOf(no such pid) = %+v, want unknown", got)
	}
}

func TestContainerOfEventUsesTheKernelNames(t *testing.T) {
	const id = "4f1c2b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a"
	const uid = "0d6a2c31-5b7e-4f19-9c1a-7e2b3d4f5a6b"
	gone := uint32(1 << 30) // no such process: only the kernel's names can tell
	for name, tc := range map[string]struct {
		names CgroupNames
		want  Container
	}{
		"cgroupfs":        {CgroupNames{Leaf: id, Parent: "pod" + uid}, Container{ID: id, PodUID: uid}},
		"systemd":         {CgroupNames{Leaf: "cri-containerd-" + id + ".scope", Parent: "kubepods-besteffort-pod0d6a2c31_5b7e_4f19_9c1a_7e2b3d4f5a6b.slice"}, Container{ID: id, PodUID: uid}},
		"host cgroup":     {CgroupNames{Leaf: "user.slice", Parent: "/"}, Container{ID: "host"}},
		"nothing read":    {CgroupNames{}, Container{}},
		"container, pod?": {CgroupNames{Leaf: id, Parent: "kubepods"}, Container{ID: id}},
	} {
		if got := ContainerOfEvent("/proc", Event{TGID: gone, Cgroup: tc.names}); got != tc.want {
			t.Errorf("%s: %+v, want %+v", name, got, tc.want)
		}
	}
}
