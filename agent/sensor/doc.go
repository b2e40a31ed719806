// Package sensor loads DriverPilot's built-in exec sensor (bpf/exec.bpf.c), decodes its events and
// reports upper-layer execs as Falco-shaped alerts.
//
// The package is layered the way the agent is: load (builtin.go: one program and its map per
// driver, attached to sched_process_exec), decode (decode.go: raw kernel records to Event) and
// report (alert.go: one JSON line per upper-layer exec, in the shape of Falco's "Drop and execute
// new binary in container" alert). Kernel-dependent decisions happen at load time only; the
// package returns wrapped errors and never logs.
//
// Cost: the kernel program sends only upper-layer and memfd execs, and lower-layer ones while a
// self-test asks for them (LowerLayerRequester); it never wakes the reader per event, and the
// reader reads at least every FlushInterval. Load: what the kernel had no buffer room for, and
// what a full subscriber channel refused, is counted (DropCounter), so the self-test can call a
// miss inconclusive instead of blaming the driver. Health: HealthChecker says whether the reader
// is alive and draining; alerts are written outside the lock Subscribe, Close and Health need.
//
// The Sensor interface is what the self-test (agent/selftest) drives, so a fault-injecting
// implementation can prove that the self-test fails when detection does.
package sensor
