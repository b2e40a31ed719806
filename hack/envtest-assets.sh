#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests and the local cluster run (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl) from the Go module proxy,
# pinned, and caches them outside the clone keyed by version, so a fresh clone reuses them.
# Prints the directory to use as KUBEBUILDER_ASSETS on its last line of stdout.
#
# Kubernetes cannot be `go install`ed at a version (its go.mod replaces the staging modules
# with local paths), so the binaries are built inside a throwaway module that requires it and
# points every staging module at its published version. All Kubernetes binaries come from one
# `go build`, so the packages they share compile once.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.7.3}"
CACHE_ROOT="${DRIVERPILOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driverpilot}"
ASSETS="$CACHE_ROOT/envtest/k8s-v${KUBE_VERSION}-etcd-v${ETCD_VERSION}"
KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

log() { echo "envtest-assets: $*" >&2; }
die() { echo "envtest-assets: error: $*" >&2; exit 1; }

command -v go >/dev/null || die "go is not on PATH"
mkdir -p "$ASSETS"
# One builder at a time: a second caller (a parallel test run) waits for the first.
exec 9>"$ASSETS/.lock"
if ! flock -n 9; then log "another build holds $ASSETS/.lock; waiting"; flock 9; fi

# build_from_module MODULE VERSION OUTDIR STAGING_PREFIX STAGING_VERSION LDFLAGS PKG...
build_from_module() {
  local module="$1" version="$2" outdir="$3" staging_prefix="$4" staging_version="$5" ldflags="$6"
  shift 6
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  log "resolving $module@$version"
  local gomod
  gomod="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$module@$version" 2>&1)" \
    || die "cannot download $module@$version from the Go module proxy: $gomod"
  local gomod_file; gomod_file="$(printf '%s\n' "$gomod" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  [ -f "$gomod_file" ] || die "no go.mod for $module@$version in the module cache"
  local goversion; goversion="$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$gomod_file" | head -1)"
  {
    echo "module driverpilot.local/build"
    echo "go ${goversion}"
    echo "require $module $version"
    # Every local replace in the upstream go.mod becomes a replace to the published version.
    if [ -n "$staging_prefix" ]; then
      grep -oE "^\s*(replace\s+)?${staging_prefix}[^ ]+\s+=>\s+\./staging/[^ ]+" "$gomod_file" \
        | sed -E 's/^\s*(replace\s+)?//; s/\s+=>.*//' | sort -u \
        | while read -r m; do echo "replace $m => $m $staging_version"; done
    fi
  } > "$work/go.mod"
  echo "package tools" > "$work/tools.go"
  for pkg in "$@"; do echo "import _ \"$pkg\"" >> "$work/tools.go"; done
  log "downloading dependencies of $module@$version (this prints nothing for a while)"
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy >/dev/null 2>"$work/tidy.log") \
    || die "go mod tidy failed for $module@$version: $(tail -20 "$work/tidy.log")"
  log "building $* (several minutes on 2 cores, once per version)"
  local start=$SECONDS
  mkdir -p "$work/out"
  (cd "$work" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w $ldflags" -o "$work/out/" "$@") \
    || die "build of $* failed"
  local f
  for f in "$work"/out/*; do
    cp "$f" "$outdir/.$(basename "$f").new" && mv -f "$outdir/.$(basename "$f").new" "$outdir/$(basename "$f")"
  done
  log "built $* in $((SECONDS - start))s"
}

if [ ! -x "$ASSETS/etcd" ]; then
  build_from_module go.etcd.io/etcd/server/v3 "v${ETCD_VERSION}" "$ASSETS" "" "" "" go.etcd.io/etcd/server/v3
  mv "$ASSETS/server" "$ASSETS/etcd" # the package path ends in v3: go names the binary "server"
else
  log "etcd v${ETCD_VERSION} cached"
fi
# Binaries report the version they were built from (kubectl version, the node's kubelet version).
KUBE_LDFLAGS="-X k8s.io/component-base/version.gitVersion=v${KUBE_VERSION} -X k8s.io/component-base/version.gitMajor=${KUBE_VERSION%%.*}"
KUBE_LDFLAGS+=" -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean"
KUBE_LDFLAGS+=" -X k8s.io/client-go/pkg/version.gitVersion=v${KUBE_VERSION}"
missing=()
for b in "${KUBE_BINARIES[@]}"; do [ -x "$ASSETS/$b" ] || missing+=("k8s.io/kubernetes/cmd/$b"); done
# An older cache built without the version stamp is relinked (into place, atomically: running
# copies keep working).
if [ ${#missing[@]} -eq 0 ] && ! "$ASSETS/kubelet" --version 2>/dev/null | grep -qx "Kubernetes v${KUBE_VERSION}"; then
  log "cached binaries do not report v${KUBE_VERSION}; relinking them"
  for b in "${KUBE_BINARIES[@]}"; do missing+=("k8s.io/kubernetes/cmd/$b"); done
fi
if [ ${#missing[@]} -gt 0 ]; then
  build_from_module k8s.io/kubernetes "v${KUBE_VERSION}" "$ASSETS" "k8s.io/" "v0.${KUBE_VERSION#1.}" "$KUBE_LDFLAGS" "${missing[@]}"
else
  log "Kubernetes v${KUBE_VERSION} binaries cached"
fi
echo "$ASSETS"
