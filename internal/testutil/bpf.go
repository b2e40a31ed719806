package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// UnheldSensorPrograms lists sensor programs that no live process holds (a teammate's benchmark
// may run the sensor at the same time; its programs are not a leak).
func UnheldSensorPrograms(t testing.TB) []string {
	t.Helper()
	held := map[string]bool{}
	fdinfos, _ := filepath.Glob("/proc/[0-9]*/fdinfo/*")
	for _, f := range fdinfos {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if id, ok := strings.CutPrefix(line, "prog_id:"); ok {
				held[strings.TrimSpace(id)] = true
			}
		}
	}
	var out []string
	for _, p := range SensorPrograms(t) {
		id := p[strings.LastIndex(p, " ")+1 : len(p)-1]
		if !held[id] {
			out = append(out, p)
		}
	}
	return out
}

// SensorPrograms lists the loaded BPF programs of the built-in sensor ("dp_exec…").
func SensorPrograms(t testing.TB) []string {
	t.Helper()
	var names []string
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return names
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		if info, err := p.Info(); err == nil && strings.HasPrefix(info.Name, "dp_exec") {
			names = append(names, fmt.Sprintf("%s (id %d)", info.Name, id))
		}
		p.Close()
	}
}
