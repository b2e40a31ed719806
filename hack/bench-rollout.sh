#!/usr/bin/env bash
# Rollout benchmark: N simulated nodes and agents against a real kube-apiserver and etcd
# (envtest) with the real manager as a separate process. Each run measures the API server's raw
# write rate first, then the rollout (convergence time, the manager's API writes per node, its
# peak RSS, the rollout's write rate against the raw one) and a steady-state window after it
# (writes and bytes per node per minute). Arguments go to hack/bench-rollout, e.g.
#   hack/bench-rollout.sh -nodes 1000 -profiles 10 -upgrade
# Without arguments it runs the growth table of issue 13: 1000, 5000 and 20000 nodes in one
# profile and 5000 nodes in ten profiles, one after the other (never two at once), and prints
# one table of them; the 5000-node run in one profile also runs -upgrade. Between runs it waits
# for the machine to settle. It takes about 25 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh | tail -1)"
  export KUBEBUILDER_ASSETS
fi
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/bench-rollout" ./hack/bench-rollout
CGO_ENABLED=0 go build -trimpath -o "$bin/driverpilot" ./cmd/driverpilot
if [ "$#" -gt 0 ]; then
  exec_args=("$@")
  "$bin/bench-rollout" -manager-bin "$bin/driverpilot" "${exec_args[@]}"
  exit
fi
# settle lets the machine come back to rest after a run (a large run's deleted etcd data is
# still written back and discarded): up to two minutes, until the 1-minute load is below 1.
settle() {
  sync
  for _ in $(seq 1 24); do
    awk '{ exit !($1 < 1.0) }' /proc/loadavg && return
    sleep 5
  done
}
status=0
first=1
for run in "-nodes 1000" "-nodes 5000 -upgrade" "-nodes 20000 -timeout 40m" "-nodes 5000 -profiles 10"; do
  [ "$first" = 1 ] || settle
  first=0
  # shellcheck disable=SC2086 # $run is a list of flags
  "$bin/bench-rollout" -manager-bin "$bin/driverpilot" -timeout 15m $run | tee -a "$bin/runs.txt" || status=1
done
"$bin/bench-rollout" -table "$bin/runs.txt"
exit "$status"
