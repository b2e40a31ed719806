package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procStat is the fields of /proc/<pid>/stat after the command name (which may hold spaces),
// with the name; nil when the process is gone.
func procStat(pid int) (comm string, fields []string) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", nil
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", nil
	}
	return s[open+1 : end], strings.Fields(s[end+1:])
}

// procCPUSeconds is a process's user+system CPU time so far, -1 when unknown.
func procCPUSeconds(pid int) float64 {
	_, f := procStat(pid)
	if len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

// cpuUsers are the processes that share this machine's cores during a run: the control plane
// (this process's kube-apiserver and etcd children), the manager, and this process (the
// simulated agents and the observer).
type cpuUsers struct{ apiserver, etcd, manager int }

func findCPUUsers(manager int) cpuUsers {
	u := cpuUsers{manager: manager}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		comm, f := procStat(pid)
		if len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		switch comm {
		case "kube-apiserver":
			u.apiserver = pid
		case "etcd":
			u.etcd = pid
		}
	}
	return u
}

// cpuSnap is the CPU seconds each user had used at one moment (-1: unknown).
type cpuSnap struct{ apiserver, etcd, manager, bench float64 }

func (u cpuUsers) snap() cpuSnap {
	at := func(pid int) float64 {
		if pid == 0 {
			return -1
		}
		return procCPUSeconds(pid)
	}
	return cpuSnap{at(u.apiserver), at(u.etcd), at(u.manager), procCPUSeconds(os.Getpid())}
}

// cores is the cores each user kept busy between two snapshots, seconds apart, as text.
func cores(a, b cpuSnap, seconds float64) string {
	one := func(name string, x, y float64) string {
		if x < 0 || y < 0 || seconds <= 0 {
			return name + " ?"
		}
		return fmt.Sprintf("%s %.2f", name, (y-x)/seconds)
	}
	return strings.Join([]string{
		one("API server", a.apiserver, b.apiserver), one("etcd", a.etcd, b.etcd),
		one("manager", a.manager, b.manager), one("this process (simulated agents, observer)", a.bench, b.bench),
	}, ", ")
}
