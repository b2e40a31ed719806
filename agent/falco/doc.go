// Package falco makes a real Falco the sensor the self-test drives (DESIGN §3, §7).
//
// DriverPilot does not load Falco's driver itself: the manager's decision (NodeSensor
// spec.driver) is written once, by the agent's init step, into the files Falco and its driver
// loader read, so they can never disagree:
//
//   - config.d/engine-kind-driverpilot.yaml: Falco's engine.kind and that kind's block, loaded by
//     Falco from /etc/falco/config.d (Falco 0.38.0 and later);
//   - falcoctl/falcoctl.yaml: falcoctl's driver section (driver.type is the one decided driver), so
//     `falcoctl driver install` installs the kernel module or the legacy eBPF probe, and does
//     nothing for modern_ebpf;
//   - rules/driverpilot_selftest_rules.yaml: one rule that reports the self-test's own executions
//     that Falco does not flag as upper layer (see below).
//
// Sensor receives Falco's JSON alerts from http_output and turns them into sensor.Event values,
// so the same self-test runs against Falco. Two rules count:
//
//   - "Drop and execute new binary in container" (Falco's own rule, proc.is_exe_upper_layer=true):
//     its alert is the only evidence of an upper-layer exec. If Falco misses the upper layer
//     (falco#3286) this alert never comes and the upper-layer and copy-up checks fail.
//   - "DriverPilot self-test exec" (ProbeRule): fires for executables named dp-* that Falco did
//     not flag as upper layer. It proves that Falco saw the exec, which is what makes the absence
//     of the drop-and-execute alert meaningful for the lower-layer check: an alert from this rule
//     without a layer flag is reported as lower layer (Falco before libs 0.18 has no lower-layer
//     flag; where evt.arg.flags carries EXE_LOWER_LAYER it is used as is). Memfd executions keep
//     EXE_FROM_MEMFD and get no layer.
//
// Alerts are matched by the executable's file name (the base of proc.exepath; proc.name is the
// kernel's 15-byte comm and too short for the self-test's names). Bad or partial documents are
// counted and logged, never fatal.
package falco
