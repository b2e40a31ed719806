#!/usr/bin/env bash
# Builds the control-plane binaries that envtest runs (kube-apiserver, etcd) from the Go
# module proxy, pinned, and caches them outside the clone keyed by version, so a fresh clone
# reuses them. Prints the directory to use as KUBEBUILDER_ASSETS on its last line of stdout.
#
# Kubernetes cannot be `go install`ed at a version (its go.mod replaces the staging modules
# with local paths), so each binary is built inside a throwaway module that requires it and
# points every staging module at its published version.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.7.3}"
CACHE_ROOT="${DRIVERPILOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driverpilot}"
ASSETS="$CACHE_ROOT/envtest/k8s-v${KUBE_VERSION}-etcd-v${ETCD_VERSION}"

log() { echo "envtest-assets: $*" >&2; }
die() { echo "envtest-assets: error: $*" >&2; exit 1; }

command -v go >/dev/null || die "go is not on PATH"

# build_from_module MODULE VERSION PKG OUT [STAGING_PREFIX STAGING_VERSION]
build_from_module() {
  local module="$1" version="$2" pkg="$3" out="$4" staging_prefix="${5:-}" staging_version="${6:-}"
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
  echo "import _ \"$pkg\"" >> "$work/tools.go"
  log "downloading dependencies of $module@$version (this prints nothing for a while)"
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy >/dev/null 2>"$work/tidy.log") \
    || die "go mod tidy failed for $module@$version: $(tail -20 "$work/tidy.log")"
  log "building $(basename "$out") from $pkg (several minutes on 2 cores, once per version)"
  local start=$SECONDS
  (cd "$work" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out.tmp" "$pkg") \
    || die "build of $pkg failed"
  mv "$out.tmp" "$out"
  log "built $(basename "$out") in $((SECONDS - start))s"
}

mkdir -p "$ASSETS"
if [ ! -x "$ASSETS/etcd" ]; then
  build_from_module go.etcd.io/etcd/server/v3 "v${ETCD_VERSION}" go.etcd.io/etcd/server/v3 "$ASSETS/etcd"
else
  log "etcd v${ETCD_VERSION} cached"
fi
if [ ! -x "$ASSETS/kube-apiserver" ]; then
  build_from_module k8s.io/kubernetes "v${KUBE_VERSION}" k8s.io/kubernetes/cmd/kube-apiserver \
    "$ASSETS/kube-apiserver" "k8s.io/" "v0.${KUBE_VERSION#1.}"
else
  log "kube-apiserver v${KUBE_VERSION} cached"
fi
# envtest looks for kubectl beside the others; use the one on PATH when there is one.
if [ ! -x "$ASSETS/kubectl" ] && command -v kubectl >/dev/null; then
  ln -sf "$(command -v kubectl)" "$ASSETS/kubectl"
fi
echo "$ASSETS"
