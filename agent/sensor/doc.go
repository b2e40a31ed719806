// Package sensor loads DriverPilot's built-in exec sensor (bpf/exec.bpf.c), decodes its events and
// reports upper-layer execs as Falco-shaped alerts.
//
// The package is layered the way the agent is: load (builtin.go: one program and its map per
// driver, attached to sched_process_exec), decode (decode.go: raw kernel records to Event) and
// report (alert.go: one JSON line per upper-layer exec, in the shape of Falco's "Drop and execute
// new binary in container" alert). Kernel-dependent decisions happen at load time only; the
// package returns wrapped errors and never logs.
//
// The Sensor interface is what the self-test (agent/selftest) drives, so a fault-injecting
// implementation can prove that the self-test fails when detection does.
package sensor
