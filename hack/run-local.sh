#!/usr/bin/env bash
# The product's main job on this machine: an embedded control plane, the CRDs, the manager, this
# machine as a Node, the real agent and the sample profile, converging until the node is Ready.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh | tail -1)"
export KUBEBUILDER_ASSETS
mkdir -p bin
CGO_ENABLED=0 go build -o bin/driverpilot-local ./hack/local
exec bin/driverpilot-local
