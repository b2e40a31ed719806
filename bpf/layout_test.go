package bpf

import (
	"encoding/binary"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestExecEventLayout checks the Go twin of struct exec_event against the C struct as the
// compiled object describes it in BTF (tetragon's alignchecker idea): same total size, and every
// C member at the same offset with the same size in Go. encoding/binary must agree too, because
// the decoder reads records with it.
func TestExecEventLayout(t *testing.T) {
	spec, err := LoadExec()
	if err != nil {
		t.Fatal(err)
	}
	var cStruct *btf.Struct
	if err := spec.Types.TypeByName("exec_event", &cStruct); err != nil {
		t.Fatalf("struct exec_event not in the object's BTF: %v", err)
	}
	goType := reflect.TypeOf(ExecExecEvent{})

	if got, want := int(goType.Size()), int(cStruct.Size); got != want {
		t.Errorf("Go struct is %d bytes, C struct is %d", got, want)
	}
	if got, want := binary.Size(ExecExecEvent{}), int(cStruct.Size); got != want {
		t.Errorf("encoding/binary sees %d bytes, C struct is %d", got, want)
	}
	if len(cStruct.Members) < 9 {
		t.Fatalf("C struct has %d members, expected at least 9", len(cStruct.Members))
	}
	for _, m := range cStruct.Members {
		field, ok := goType.FieldByName(goName(m.Name))
		if !ok {
			t.Errorf("C member %s has no Go field %s", m.Name, goName(m.Name))
			continue
		}
		cSize, err := btf.Sizeof(m.Type)
		if err != nil {
			t.Fatalf("size of %s: %v", m.Name, err)
		}
		if got, want := field.Offset, uintptr(m.Offset.Bytes()); got != want {
			t.Errorf("%s: Go offset %d, C offset %d", m.Name, got, want)
		}
		if got := field.Type.Size(); got != uintptr(cSize) {
			t.Errorf("%s: Go size %d, C size %d", m.Name, got, cSize)
		}
	}
}

// goName converts a C member name to bpf2go's Go field name (ktime_ns -> KtimeNs, _pad -> Pad).
func goName(c string) string {
	var b strings.Builder
	for _, part := range strings.Split(c, "_") {
		if part != "" {
			b.WriteString(strings.ToUpper(part[:1]) + part[1:])
		}
	}
	return b.String()
}
