#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine (hack/cluster): builds the pinned parts once
# (cached under ~/.cache/driverpilot), the driverpilot image (make image), and runs
#   hack/cluster.sh run    # cluster + the operator installed as the README says + the sample profile
#   hack/cluster.sh up     # only the cluster
#   hack/cluster.sh down   # clean up after a run that was killed
# Ctrl-C tears everything down and restores the host. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd="${1:-run}"
if [ "$cmd" != down ]; then
  hack/deps.sh
fi
KUBE_BIN="$(hack/envtest-assets.sh | tail -1)"
NODE_BIN="$(hack/node-assets.sh | tail -1)"
images=()
if [ "$cmd" = run ]; then
  make --no-print-directory image >&2
  images=(--images "dist/driverpilot-$(make --no-print-directory -s print-version).tar")
fi
mkdir -p bin
CGO_ENABLED=0 go build -o bin/cluster ./hack/cluster
exec bin/cluster --kube-bin "$KUBE_BIN" --node-bin "$NODE_BIN" "${images[@]}" "$cmd"
