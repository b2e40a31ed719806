#!/usr/bin/env bash
# Regenerates deepcopy, CRDs, RBAC and the bpf2go output and fails when any generated file
# changed: the committed files must be what `make generate manifests` produces.
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot() {
  local dirs=()
  for d in api config/crd config/rbac bpf; do [ -d "$d" ] && dirs+=("$d"); done
  find "${dirs[@]}" -type f \( -name 'zz_generated*' -o -path 'config/crd/*' \
    -o -path 'config/rbac/role.yaml' -o -name '*_bpfe[lb].go' -o -name '*_bpfe[lb].o' \) 2>/dev/null \
    | sort | xargs -r sha256sum
}
before="$(snapshot)"
make --no-print-directory generate manifests >/dev/null
after="$(snapshot)"
if [ "$before" != "$after" ]; then
  echo "generated files are stale; run 'make generate manifests' and commit the result:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "generated files are up to date"
