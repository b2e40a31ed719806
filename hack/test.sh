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

step "Control plane binaries for envtest"
KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh | tail -1)"
export KUBEBUILDER_ASSETS
echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"

step "Build"
make --no-print-directory build

step "Go tests"
skipflag=()
if [ "${CI:-}" = "true" ] || [ "${FAIL_ON_SKIP:-}" = "1" ]; then skipflag=(-fail-on-skip); fi
go build -o bin/testsummary ./hack/testsummary
set +e
go test -json -count=1 -timeout 20m ./... 2>&1 | bin/testsummary "${skipflag[@]}"
rc=$?
set -e
[ $rc -eq 0 ] || { echo "Go tests failed"; exit $rc; }

# SKIP_KERNEL_MATRIX=1 is for quick local runs only; CI always runs it.
if [ "${CI:-}" = "true" ] || [ "${SKIP_KERNEL_MATRIX:-}" != "1" ]; then
  step "Kernel matrix (Debian 6.1 kernels under qemu)"
  hack/kernel-matrix.sh
fi
echo; echo "test suite passed in $((SECONDS - start))s"
