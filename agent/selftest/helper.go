package selftest

import (
	"encoding/binary"
	"fmt"
	"runtime"
)

// helperBinary returns a minimal static ELF executable for this machine that calls exit(0):
// one PT_LOAD segment holding the ELF header, the program header and three instructions. It
// is what the checks execute; a few hundred bytes keep the staging fast and need no file from
// the host, which may be an initramfs.
func helperBinary() ([]byte, error) {
	var machine uint16
	var code []byte
	switch runtime.GOARCH {
	case "amd64":
		machine = 62 // EM_X86_64
		code = []byte{
			0xb8, 0x3c, 0x00, 0x00, 0x00, // mov eax, 60 (exit)
			0x31, 0xff, // xor edi, edi
			0x0f, 0x05, // syscall
		}
	case "arm64":
		machine = 183 // EM_AARCH64
		code = []byte{
			0x00, 0x00, 0x80, 0xd2, // mov x0, #0
			0xa8, 0x0b, 0x80, 0xd2, // mov x8, #93 (exit)
			0x01, 0x00, 0x00, 0xd4, // svc #0
		}
	default:
		return nil, fmt.Errorf("no helper binary for %s", runtime.GOARCH)
	}
	const (
		ehdrSize = 64
		phdrSize = 56
		vaddr    = 0x400000
	)
	size := uint64(ehdrSize + phdrSize + len(code))
	le := binary.LittleEndian
	b := make([]byte, 0, size)
	b = append(b, 0x7f, 'E', 'L', 'F', 2 /* 64-bit */, 1 /* little-endian */, 1 /* version */, 0 /* SysV ABI */)
	b = append(b, make([]byte, 8)...)
	b = le.AppendUint16(b, 2) // ET_EXEC
	b = le.AppendUint16(b, machine)
	b = le.AppendUint32(b, 1)                       // EV_CURRENT
	b = le.AppendUint64(b, vaddr+ehdrSize+phdrSize) // entry: the code after the headers
	b = le.AppendUint64(b, ehdrSize)                // program headers right after this header
	b = le.AppendUint64(b, 0)                       // no section headers
	b = le.AppendUint32(b, 0)                       // flags
	b = le.AppendUint16(b, ehdrSize)
	b = le.AppendUint16(b, phdrSize)
	b = le.AppendUint16(b, 1) // one program header
	b = le.AppendUint16(b, 0) // section header entry size
	b = le.AppendUint16(b, 0) // section header count
	b = le.AppendUint16(b, 0) // section name table index
	b = le.AppendUint32(b, 1) // PT_LOAD
	b = le.AppendUint32(b, 5) // PF_R|PF_X
	b = le.AppendUint64(b, 0) // file offset
	b = le.AppendUint64(b, vaddr)
	b = le.AppendUint64(b, vaddr)
	b = le.AppendUint64(b, size) // file size
	b = le.AppendUint64(b, size) // memory size
	b = le.AppendUint64(b, 0x1000)
	return append(b, code...), nil
}
