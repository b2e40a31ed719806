#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, pinned where the version matters
# (clang builds the committed BPF objects, so its version is part of the reproducible output).
# Idempotent and quiet when everything is present.
set -euo pipefail

CLANG_VERSION="1:14.0-55.7~deb12u1"
QEMU_VERSION="1:7.2+dfsg-7+deb12u18+b3"
PACKAGES=(
  "clang=${CLANG_VERSION}"   # bpf2go's compiler for bpf/*.c
  llvm                       # llvm-strip for bpf2go
  libbpf-dev                 # bpf_helpers.h, bpf_core_read.h, bpf_tracing.h
  "qemu-system-x86=${QEMU_VERSION}"  # kernel matrix: boots Debian amd64 kernels under TCG
  "qemu-system-arm=${QEMU_VERSION}"  # kernel matrix: qemu-system-aarch64 boots the arm64 kernel (TCG)
  xz-utils                   # kernel matrix: decompresses modules
  zstd                       # kernel matrix: decompresses modules
  cpio                       # kernel matrix: initramfs
  kmod                       # kernel matrix: modinfo/depmod on unpacked kernel packages
  "containernetworking-plugins=1.1.1+ds1-3+b5"  # local cluster: bridge, host-local, loopback CNI plugins
  "nftables=1.0.6-2+deb12u2" # local cluster: kube-proxy's nftables mode
  "libseccomp-dev=2.5.4-1+deb12u1"  # local cluster: runc is built with cgo against libseccomp
  pkg-config                 # local cluster: runc's cgo finds libseccomp
  conntrack                  # local cluster: kube-proxy clears stale conntrack entries
)

missing=()
for p in "${PACKAGES[@]}"; do
  name="${p%%=*}"; want="${p#*=}"
  have="$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)"
  if [[ "$have" != "install ok installed"* ]] || { [ "$want" != "$p" ] && [[ "$have" != *" $want" ]]; }; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing packages ${missing[*]}; run as root or install them: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2 || { echo "deps: apt-get update failed" >&2; exit 1; }
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
  || { echo "deps: apt-get install ${missing[*]} failed" >&2; exit 1; }
