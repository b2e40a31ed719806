// Package bpf holds DriverPilot's eBPF programs and their bpf2go output (committed, embedded in the
// binary so it stays static). Regenerate with `make generate` (clang 14 pinned by hack/deps.sh);
// the objects are built for bpfel (little-endian; tested on amd64) and stripped of DWARF so the
// output is byte-for-byte reproducible. BTF stays: CO-RE relocations need it.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc /usr/bin/clang -strip /usr/bin/llvm-strip -target bpfel -output-stem exec -type exec_event -type exe_flag -type layer_method -type method_agreement -type setting_flag -type counter Exec exec.bpf.c -- -O2 -g -Wall -Werror -mcpu=v3
