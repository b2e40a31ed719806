package v1alpha1

import "unicode/utf8"

// Truncate shortens s to at most n characters (the unit of a schema's maxLength), ending it with
// "..." when it was cut. It never splits a UTF-8 sequence.
func Truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	if n <= 3 {
		return string([]rune(s)[:n])
	}
	return string([]rune(s)[:n-3]) + "..."
}

// Clamp shortens every string of the status to its bound in the schema, so a long error or a
// hostile value costs its own detail and never the whole report (the API server refuses an
// object with one string over its maxLength).
func (st *NodeSensorStatus) Clamp() {
	st.AgentVersion = Truncate(st.AgentVersion, 64)
	if p := st.Probe; p != nil {
		for _, f := range []*StringFact{&p.Kernel.Release, &p.Kernel.Version, &p.Kernel.Architecture, &p.Kernel.BootID,
			&p.BTF.OverlayTypes, &p.Lockdown, &p.Cloud, p.EBPF.Memlock, p.BoundingSet} {
			if f != nil { // the optional facts of newer agents
				f.Value, f.Source, f.Error = Truncate(f.Value, 256), Truncate(f.Source, 256), Truncate(f.Error, 1024)
			}
		}
		for _, f := range []*BoolFact{&p.BTF.Vmlinux, &p.EBPF.TPBTF, &p.EBPF.RawTracepoint, &p.EBPF.RingBuffer,
			&p.Modules.Supported, &p.Modules.Disabled, &p.SecureBoot, &p.Overlayfs} {
			f.Source, f.Error = Truncate(f.Source, 256), Truncate(f.Error, 1024)
		}
		d := &p.Distro
		d.ID, d.VersionID, d.PrettyName = Truncate(d.ID, 64), Truncate(d.VersionID, 64), Truncate(d.PrettyName, 256)
		d.Source, d.Error = Truncate(d.Source, 256), Truncate(d.Error, 1024)
	}
	if t := st.SelfTest; t != nil {
		t.Reason, t.Message = Truncate(t.Reason, 128), Truncate(t.Message, 4096)
		t.BootID, t.AgentVersion = Truncate(t.BootID, 64), Truncate(t.AgentVersion, 64)
		for i := range t.Checks {
			c := &t.Checks[i]
			c.Expected, c.Observed = Truncate(c.Expected, 256), Truncate(c.Observed, 1024)
			c.Method, c.Message = Truncate(c.Method, 64), Truncate(c.Message, 1024)
		}
	}
}
