#!/usr/bin/env bash
# Builds the node runtime the local cluster runs (containerd, its runc shim, ctr, runc) from the Go
# module proxy, pinned, and caches it outside the clone keyed by version. Prints the directory on
# its last line of stdout. CNI plugins and nftables come from Debian (hack/deps.sh).
set -euo pipefail

CONTAINERD_VERSION="${CONTAINERD_VERSION:-2.4.2}"
RUNC_VERSION="${RUNC_VERSION:-1.3.4}"
CACHE_ROOT="${DRIVERPILOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driverpilot}"
ASSETS="$CACHE_ROOT/node/containerd-v${CONTAINERD_VERSION}-runc-v${RUNC_VERSION}"

log() { echo "node-assets: $*" >&2; }
die() { echo "node-assets: error: $*" >&2; exit 1; }

command -v go >/dev/null || die "go is not on PATH"
mkdir -p "$ASSETS"
exec 9>"$ASSETS/.lock"
if ! flock -n 9; then log "another build holds $ASSETS/.lock; waiting"; flock 9; fi

# install OUT_NAME CGO TAGS PKG@VERSION
install() {
  local name="$1" cgo="$2" tags="$3" pkg="$4"
  [ -x "$ASSETS/$name" ] && { log "$name cached"; return; }
  local gobin; gobin="$(mktemp -d)"
  log "building $pkg"
  local start=$SECONDS
  GOBIN="$gobin" CGO_ENABLED="$cgo" go install -trimpath -tags "$tags" -ldflags='-s -w' "$pkg" \
    || die "go install $pkg failed"
  mv "$gobin"/* "$ASSETS/$name"
  rmdir "$gobin"
  log "built $name in $((SECONDS - start))s"
}

install containerd 0 "" "github.com/containerd/containerd/v2/cmd/containerd@v${CONTAINERD_VERSION}"
install containerd-shim-runc-v2 0 "" "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@v${CONTAINERD_VERSION}"
install ctr 0 "" "github.com/containerd/containerd/v2/cmd/ctr@v${CONTAINERD_VERSION}"
# runc needs cgo for libseccomp (the default seccomp profile) and nsenter.
pkg-config --exists libseccomp || die "libseccomp-dev is missing (hack/deps.sh installs it)"
install runc 1 seccomp "github.com/opencontainers/runc@v${RUNC_VERSION}"
echo "$ASSETS"
