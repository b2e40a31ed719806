#!/usr/bin/env bash
# Benchmarks the built-in exec sensor (agent/sensor) on this machine, for each driver (see
# test/bench/main.go): the cost per exec in the kernel, from the kernel's BPF run-time statistics
# (ordinary and overlay lower-layer execs, target <= 0.5 us), the sensor reader thread's CPU time
# per event, and their sum, the end-to-end cost of an overlay upper-layer exec event (target
# <= 2 us); then exec throughput with and without the sensor, interleaved block by block (target:
# at least 0.98 of without). A benchmark, not a test: it fails only when it cannot measure. Needs
# root: it loads BPF programs, mounts an overlay and makes a cgroup (all removed afterwards).
#
# Extra arguments go to the Go program (test/bench), e.g. hack/bench-sensor.sh -n 5000 -trounds 51;
# -rounds 0 or -trounds 0 skips that part; -cpu N pins the throughput's exec loop (-1: not pinned);
# -sysctl uses kernel.bpf_stats_enabled=1 (restored) instead of the fd-scoped BPF_ENABLE_STATS.
# BENCH_DRIVERS selects drivers (default modern_ebpf,ebpf).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${DRIVERPILOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driverpilot}"
BIN="$CACHE/bench/sensor-bench"
STATS=/proc/sys/kernel/bpf_stats_enabled

log() { echo "bench-sensor: $*" >&2; }
die() { echo "bench-sensor: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: the benchmark loads BPF programs and mounts an overlay"
command -v go >/dev/null || die "go not found"
mkdir -p "$(dirname "$BIN")"

log "building test/bench"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$BIN" ./test/bench) || die "go build ./test/bench failed"

# The program turns BPF statistics on through BPF_ENABLE_STATS, or else through the sysctl and
# puts it back; check that the machine is left as it was found either way.
before="$(cat "$STATS" 2>/dev/null || echo unknown)"
restore() {
  local now; now="$(cat "$STATS" 2>/dev/null || echo unknown)"
  if [ "$now" != "$before" ] && [ "$before" != unknown ]; then
    log "kernel.bpf_stats_enabled is $now, restoring $before"
    echo "$before" >"$STATS"
  fi
}
trap restore EXIT

log "running (kernel.bpf_stats_enabled=$before before the run)"
"$BIN" -drivers "${BENCH_DRIVERS:-modern_ebpf,ebpf}" "$@"
