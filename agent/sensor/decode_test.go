package sensor

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/btf"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/bpf"
)

// rawEvent builds a record the way the kernel program writes it, placing each member at the
// offset the compiled object's BTF gives for struct exec_event (not the Go struct's offsets). The
// names "cgroup", "cgroup_parent" and "filename" are packed into names in that order, their
// lengths set, and the record ends after them, as the kernel sends it.
func rawEvent(t *testing.T, set map[string][]byte) []byte {
	t.Helper()
	spec, err := bpf.LoadExec()
	if err != nil {
		t.Fatal(err)
	}
	var s *btf.Struct
	if err := spec.Types.TypeByName("exec_event", &s); err != nil {
		t.Fatal(err)
	}
	var names []byte
	for _, n := range []string{"cgroup", "cgroup_parent", "filename"} {
		if v, ok := set[n]; ok {
			names = append(names, v...)
			set[n+"_len"] = []byte{byte(len(v))}
			delete(set, n)
		}
	}
	set["names"] = names
	raw := make([]byte, s.Size)
	end := 0
	for _, m := range s.Members {
		if m.Name == "names" {
			end = int(m.Offset.Bytes()) + len(names)
		}
		if v, ok := set[m.Name]; ok {
			copy(raw[m.Offset.Bytes():], v)
			delete(set, m.Name)
		}
	}
	if len(set) != 0 {
		t.Fatalf("members not in struct exec_event: %v", set)
	}
	return raw[:end]
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func TestDecode(t *testing.T) {
	raw := rawEvent(t, map[string][]byte{
		"ktime_ns":      le64(5_000_000_000),
		"pid":           le32(4242),
		"tgid":          le32(4241),
		"flags":         le32(uint32(FlagWritable | FlagUpperLayer | FlagOverlay)),
		"method":        {byte(MethodCORE)},
		"agreement":     {byte(AgreementAgree)},
		"comm":          []byte("my_echo\x00garbage"),
		"filename":      []byte("my_echo\x00"),
		"cgroup":        []byte("0123abcd\x00"),
		"cgroup_parent": []byte("pod-x\x00"),
	})
	received := time.Unix(1_800_000_000, 0)
	d := &Decoder{wallOffset: time.Duration(1_700_000_000) * time.Second, driver: v1alpha1.DriverEBPF, now: func() time.Time { return received }}

	// Perf records carry trailing padding: it must be ignored.
	ev, err := d.Decode(append(raw, 0, 0, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	want := Event{
		Time:      time.Unix(1_700_000_005, 0),
		Received:  received,
		PID:       4242,
		TGID:      4241,
		Comm:      "my_echo",
		Filename:  "my_echo",
		Flags:     FlagWritable | FlagUpperLayer | FlagOverlay,
		Method:    MethodCORE,
		Agreement: AgreementAgree,
		Driver:    v1alpha1.DriverEBPF,
		Cgroup:    CgroupNames{Leaf: "0123abcd", Parent: "pod-x"},
	}
	if !ev.Time.Equal(want.Time) {
		t.Errorf("time %v, want %v", ev.Time, want.Time)
	}
	ev.Time = want.Time
	if ev != want {
		t.Errorf("decoded\n %+v\nwant\n %+v", ev, want)
	}
	if !ev.UpperLayer() || ev.LowerLayer() || ev.FromMemfd() {
		t.Errorf("helpers disagree with flags %s", ev.Flags)
	}

	// A name without its NUL: the C side always writes one, but the decoder must not read past
	// the name's bytes either way, into the next name.
	long := strings.Repeat("x", 64)
	ev, err = d.Decode(rawEvent(t, map[string][]byte{"filename": []byte(long), "cgroup": []byte("c\x00")}))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Filename != long || ev.Cgroup.Leaf != "c" || ev.Cgroup.Parent != "" {
		t.Errorf("filename %q and cgroup %+v, want 64 x and leaf c", ev.Filename, ev.Cgroup)
	}

	// A record ends after its names; one shorter than its names say is an error, as are names
	// longer than the array.
	if _, err := d.Decode(raw[:len(raw)-1]); err == nil {
		t.Error("a short record decoded without error")
	}
	bad := rawEvent(t, map[string][]byte{"filename_len": {200}, "cgroup_len": {200}})
	if _, err := d.Decode(append(bad, make([]byte, 400)...)); err == nil {
		t.Error("names longer than the array decoded without error")
	}
	// Interned cgroup names are the same strings (one allocation), whatever record they came from.
	ev2, err := d.Decode(append([]byte(nil), raw...))
	if err != nil || ev2.Cgroup != want.Cgroup {
		t.Errorf("second decode: %+v, %v", ev2.Cgroup, err)
	}
	ev3, err := d.Decode(append([]byte(nil), raw...))
	if err != nil || unsafe.StringData(ev3.Cgroup.Leaf) != unsafe.StringData(ev2.Cgroup.Leaf) {
		t.Errorf("the same cgroup name decoded twice is two strings, not one interned: %v", err)
	}
}

func TestNewDecoderClock(t *testing.T) {
	d, err := NewDecoder(v1alpha1.DriverModernEBPF)
	if err != nil {
		t.Fatal(err)
	}
	// An event stamped with the monotonic clock now must map to about the wall clock now.
	var mono [8]byte
	ts := monotonicNow(t)
	binary.LittleEndian.PutUint64(mono[:], uint64(ts))
	ev, err := d.Decode(rawEvent(t, map[string][]byte{"ktime_ns": mono[:]}))
	if err != nil {
		t.Fatal(err)
	}
	if skew := time.Since(ev.Time); skew < -time.Second || skew > time.Second {
		t.Errorf("event time %v is %v away from now", ev.Time, skew)
	}
}

// TestFlagsMatchC keeps the hand-written Go constants equal to the C enums bpf2go generated.
func TestFlagsMatchC(t *testing.T) {
	pairs := []struct {
		name   string
		goVal  uint32
		genVal uint32
	}{
		{"EXE_WRITABLE", uint32(FlagWritable), uint32(bpf.ExecExeFlagEXE_WRITABLE)},
		{"EXE_UPPER_LAYER", uint32(FlagUpperLayer), uint32(bpf.ExecExeFlagEXE_UPPER_LAYER)},
		{"EXE_FROM_MEMFD", uint32(FlagFromMemfd), uint32(bpf.ExecExeFlagEXE_FROM_MEMFD)},
		{"EXE_LOWER_LAYER", uint32(FlagLowerLayer), uint32(bpf.ExecExeFlagEXE_LOWER_LAYER)},
		{"EXE_OVERLAY", uint32(FlagOverlay), uint32(bpf.ExecExeFlagEXE_OVERLAY)},
		{"METHOD_NONE", uint32(MethodNone), uint32(bpf.ExecLayerMethodMETHOD_NONE)},
		{"METHOD_CORE", uint32(MethodCORE), uint32(bpf.ExecLayerMethodMETHOD_CORE)},
		{"METHOD_INODE_OFFSET", uint32(MethodInodeOffset), uint32(bpf.ExecLayerMethodMETHOD_INODE_OFFSET)},
		{"AGREEMENT_SINGLE", uint32(AgreementSingle), uint32(bpf.ExecMethodAgreementAGREEMENT_SINGLE)},
		{"AGREEMENT_AGREE", uint32(AgreementAgree), uint32(bpf.ExecMethodAgreementAGREEMENT_AGREE)},
		{"AGREEMENT_DISAGREE", uint32(AgreementDisagree), uint32(bpf.ExecMethodAgreementAGREEMENT_DISAGREE)},
	}
	for _, p := range pairs {
		if p.goVal != p.genVal {
			t.Errorf("%s: Go %d, C %d", p.name, p.goVal, p.genVal)
		}
	}
}

func TestFlagsString(t *testing.T) {
	for f, want := range map[Flags]string{
		0:                             "0",
		FlagWritable | FlagUpperLayer: "EXE_WRITABLE|EXE_UPPER_LAYER",
		FlagFromMemfd:                 "EXE_FROM_MEMFD",
		FlagLowerLayer | 1<<9:         "EXE_LOWER_LAYER|0x200",
	} {
		if got := f.String(); got != want {
			t.Errorf("Flags(%#x).String() = %q, want %q", uint32(f), got, want)
		}
	}
	if MethodCORE.String() != "CORE" || MethodInodeOffset.String() != "InodeOffset" || MethodNone.String() != "" {
		t.Errorf("method names: %q %q %q", MethodCORE, MethodInodeOffset, MethodNone)
	}
}

// A record may leave its cgroup names out (cgroup_cached): they are those of the last record
// from the same CPU that carried them; a CPU that sent none yet has none, and a truncated record
// forgets its CPU's (it may have carried names), not the other CPUs'. A record that makes no
// sense (a CPU number or name lengths the kernel cannot write) forgets them all.
func TestDecodeCachedCgroupNames(t *testing.T) {
	d, err := NewDecoder(v1alpha1.DriverModernEBPF)
	if err != nil {
		t.Fatal(err)
	}
	decode := func(set map[string][]byte) Event {
		t.Helper()
		ev, err := d.Decode(rawEvent(t, set))
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	a := CgroupNames{Leaf: "ctr-a", Parent: "pod-a"}
	if ev := decode(map[string][]byte{"cpu": le32(1), "cgroup": []byte("ctr-a\x00"), "cgroup_parent": []byte("pod-a\x00"), "filename": []byte("x\x00")}); ev.Cgroup != a {
		t.Fatalf("names sent: %+v", ev.Cgroup)
	}
	if ev := decode(map[string][]byte{"cpu": le32(1), "cgroup_cached": {1}, "filename": []byte("y\x00")}); ev.Cgroup != a || ev.Filename != "y" {
		t.Errorf("names left out on CPU 1: %+v %q, want %+v and y", ev.Cgroup, ev.Filename, a)
	}
	if ev := decode(map[string][]byte{"cpu": le32(0), "cgroup_cached": {1}}); ev.Cgroup != (CgroupNames{}) {
		t.Errorf("names left out on CPU 0, which sent none: %+v", ev.Cgroup)
	}
	b := CgroupNames{Leaf: "ctr-b", Parent: "pod-b"}
	if ev := decode(map[string][]byte{"cpu": le32(2), "cgroup": []byte("ctr-b\x00"), "cgroup_parent": []byte("pod-b\x00")}); ev.Cgroup != b {
		t.Fatalf("names sent on CPU 2: %+v", ev.Cgroup)
	}
	if _, err := d.Decode(rawEvent(t, map[string][]byte{"cpu": le32(1), "filename_len": {250}})); err == nil {
		t.Fatal("a record shorter than its names decoded")
	}
	if ev := decode(map[string][]byte{"cpu": le32(1), "cgroup_cached": {1}}); ev.Cgroup != (CgroupNames{}) {
		t.Errorf("names kept on CPU 1 past its record that did not decode: %+v", ev.Cgroup)
	}
	if ev := decode(map[string][]byte{"cpu": le32(2), "cgroup_cached": {1}}); ev.Cgroup != b {
		t.Errorf("CPU 2 lost its names to CPU 1's bad record: %+v, want %+v", ev.Cgroup, b)
	}
	for what, bad := range map[string]map[string][]byte{
		"a CPU number that makes no sense":    {"cpu": le32(maxCPUs)},
		"names longer than the record's room": {"cpu": le32(1), "cgroup_len": {255}, "cgroup_parent_len": {255}, "filename_len": {255}},
	} {
		if ev := decode(map[string][]byte{"cpu": le32(2), "cgroup": []byte("ctr-b\x00"), "cgroup_parent": []byte("pod-b\x00")}); ev.Cgroup != b {
			t.Fatalf("names sent on CPU 2: %+v", ev.Cgroup)
		}
		if _, err := d.Decode(rawEvent(t, bad)); err == nil {
			t.Fatalf("a record with %s decoded", what)
		}
		if ev := decode(map[string][]byte{"cpu": le32(2), "cgroup_cached": {1}}); ev.Cgroup != (CgroupNames{}) {
			t.Errorf("CPU 2's names kept past a record with %s: %+v", what, ev.Cgroup)
		}
	}
}
