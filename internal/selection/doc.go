// Package selection decides, for one node, which capture drivers are eligible and in which order,
// and explains every driver it skips or ranks lower. It does no I/O: the input is the node's probe
// facts, the profile's driver policy, the sensor, the known-issue matrix and the failed attempts.
//
// Order: the effective preference (the first matching override's, else the profile's), filtered
// by the sensor (Builtin offers modern_ebpf and ebpf; Falco 0.44 removed ebpf), the rules of
// DESIGN §6, the known issues and the failed attempts. First eligible wins (falcoctl semantics);
// the rest are the fallbacks after a failed self-test.
//
// Unknown facts: a rule or known issue that would exclude a driver but rests on an Unknown fact
// does not exclude it. The driver stays eligible, ranked after every driver with no such doubt
// (preference order among each group), and gets a reason naming the unknown fact. The self-test
// is the safety net that turns a wrong guess into a failed attempt. An override whose match needs
// an unknown fact does not match (an unproven match must not change the policy); Decision.Notes
// says so.
//
// Fleet learning (learned.go): nodes with the same GroupKey (kernel release, architecture,
// distro, sensor and version) share verdicts. ClassifyFailure says which self-test failures
// belong to the kernel; Learn turns a group's evidence into a verdict per driver (two agreeing
// nodes in a group of more than v1alpha1.FleetLargeGroup, a standing pass overturns);
// ApplyLearned applies them to one node's decision.
package selection
