#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh machine: installs what the tests need, checks
# that generated code is up to date, vets, builds the control plane for envtest, runs every Go
# test (unit, envtest, root kernel tests) and the kernel matrix.
# In CI (CI=true) a skipped test is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo; echo "==> $*"; }
start=$SECONDS

step "Debian packages"
hack/deps.sh

step "Generated code is up to date (make generate manifests)"
hack/verify-generated.sh

step "gofmt and go vet"
make --no-print-directory fmt
go vet ./...

step "Kubernetes binaries (envtest and the local cluster) and the node runtime"
KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh | tail -1)"
DRIVERPILOT_KUBE_BIN="$KUBEBUILDER_ASSETS"
DRIVERPILOT_NODE_BIN="$(hack/node-assets.sh | tail -1)"
export KUBEBUILDER_ASSETS DRIVERPILOT_KUBE_BIN DRIVERPILOT_NODE_BIN
echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS DRIVERPILOT_NODE_BIN=$DRIVERPILOT_NODE_BIN"

step "Build"
make --no-print-directory build

step "Go tests"
skipflag=()
if [ "${CI:-}" = "true" ] || [ "${FAIL_ON_SKIP:-}" = "1" ]; then skipflag=(-fail-on-skip); fi
go build -o bin/testsummary ./hack/testsummary
set +e
# The real cluster runs alone afterwards: it owns the machine's kubelet, mounts and cgroups.
go test -json -count=1 -timeout 20m $(go list ./... | grep -v /test/cluster) 2>&1 | bin/testsummary "${skipflag[@]}"
rc=$?
set -e
[ $rc -eq 0 ] || { echo "Go tests failed"; exit $rc; }

step "A real single-node cluster: the README's install, the agent as a pod (test/cluster)"
set +e
go test -json -count=1 -timeout 30m ./test/cluster/... 2>&1 | bin/testsummary "${skipflag[@]}"
rc=$?
set -e
[ $rc -eq 0 ] || { echo "cluster tests failed"; exit $rc; }

# SKIP_KERNEL_MATRIX=1 is for quick local runs only; CI always runs it.
if [ "${CI:-}" = "true" ] || [ "${SKIP_KERNEL_MATRIX:-}" != "1" ]; then
  step "Kernel matrix (Debian 5.10, 6.1, 6.12 kernels, amd64 and arm64, under qemu; the host kernel)"
  hack/kernel-matrix.sh
fi
echo; echo "test suite passed in $((SECONDS - start))s"
