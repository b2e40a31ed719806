#!/usr/bin/env bash
# Rollout benchmark: N simulated nodes and agents against a real kube-apiserver and etcd
# (envtest) with the real manager as a separate process; prints convergence time, the
# manager's API writes per node and its peak RSS. Arguments go to hack/bench-rollout, e.g.
#   hack/bench-rollout.sh -nodes 100
# Without arguments it runs 100 nodes, then 1000.
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
else
  "$bin/bench-rollout" -manager-bin "$bin/driverpilot" -nodes 100
  "$bin/bench-rollout" -manager-bin "$bin/driverpilot" -nodes 1000
fi
