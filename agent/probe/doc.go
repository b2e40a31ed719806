// Package probe measures the facts of a node that decide which capture driver can work there:
// kernel release and version, architecture, boot ID, BTF and where overlayfs's types live, the
// eBPF abilities proven by loading and attaching programs, lockdown, module support, Secure Boot,
// overlayfs, the distribution and the cloud provider.
//
// Every file is read below a root path ("/" on a host, "/host" in a pod, a fixture tree in tests).
// Each fact records how it was obtained, or the error that prevented it: an unreadable fact is
// Unknown, never a guess. The eBPF abilities are measured by an injectable Abilities prober: the
// live one loads programs into the running kernel, so it is only used when the root describes
// that kernel (same boot ID); fixture tests inject recorded answers.
//
// The package returns facts and never logs.
package probe
