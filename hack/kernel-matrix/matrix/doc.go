// Package matrix is the contract between the kernel-matrix guest and the host: the markers the
// guest's /init prints on the serial console around each result, the parser that finds them again
// in a console log full of kernel messages, and the verdict and table built from them.
//
// A section on the console looks like this (the nonce is fresh for every boot, so a stale log or a
// line printed by something else can never pass for a result):
//
//	@@DPMATRIX <nonce> BEGIN selftest/modern_ebpf@@
//	{ ...the selftest JSON... }
//	@@DPMATRIX <nonce> END selftest/modern_ebpf rc=0 len=1234 crc32=89abcdef@@
//
// The length and CRC-32 cover the body, so output that the kernel's own console messages tore apart
// is reported as corrupt instead of being half-parsed.
//
// The guest and the host both import this package, so the format lives in one place and the unit
// tests keep the matrix honest without booting anything.
package matrix
