#!/usr/bin/env bash
# Boots Debian bookworm's 6.1 kernel flavours under qemu (TCG) with an initramfs holding a static Go
# /init (hack/kernel-matrix/init) and the static driverpilot binary; the guest loads Debian's
# overlay module (which gives the kernel module BTF, the falco#3286 situation), runs
# `driverpilot selftest` with every driver and prints the results between markers on the serial
# console. This script then prints kernel × driver × check × result × method and exits non-zero
# unless every cell passed on every kernel.
#
# Environment:
#   KERNEL_MATRIX_FLAVOURS   boots, each FLAVOUR or FLAVOUR:no-overlay-btf (default: "amd64
#                            cloud-amd64 rt-amd64 amd64:no-overlay-btf"). no-overlay-btf strips the
#                            .BTF section from overlay.ko: the module loads without module BTF, the
#                            falco#3286 situation, so CO-RE cannot resolve ovl_inode and the sensor
#                            must decide by the inode offset.
#   KERNEL_MATRIX_DRIVERS    default "modern_ebpf,ebpf"
#   KERNEL_MATRIX_CHECKS     default "ExeUpperLayer,ExeLowerLayer,ExeCopyUp,ExeFromMemfd"
#   KERNEL_MATRIX_TIMEOUT    seconds one boot may take, boot to power-off (default 600)
#   KERNEL_MATRIX_VERBOSE=1  copy the serial console to stderr while it runs
#   KERNEL_MATRIX_LOGLEVEL   console loglevel (default 4: warnings and worse, which keeps kernel
#                            lines out of the results; a panic still shows). 8 to debug a boot.
#   DRIVERPILOT_CACHE        cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/driverpilot)
set -euo pipefail

# Pinned: Debian bookworm-security's linux 6.1 (ABI 6.1.0-56). Change both together; `apt-cache
# search linux-image-6.1.0 | grep unsigned` lists what the mirror holds.
KERNEL_ABI="6.1.0-56"
KERNEL_PKG_VERSION="6.1.192-2"
read -r -a FLAVOURS <<<"${KERNEL_MATRIX_FLAVOURS:-amd64 cloud-amd64 rt-amd64 amd64:no-overlay-btf}"
DRIVERS="${KERNEL_MATRIX_DRIVERS:-modern_ebpf,ebpf}"
CHECKS="${KERNEL_MATRIX_CHECKS:-ExeUpperLayer,ExeLowerLayer,ExeCopyUp,ExeFromMemfd}"
TIMEOUT="${KERNEL_MATRIX_TIMEOUT:-600}"
# The self-test in the guest gets most of the boot's budget, shared by the drivers.
SELFTEST_TIMEOUT="$(( (TIMEOUT - 60) / $(tr ',' '\n' <<<"$DRIVERS" | grep -c .) ))s"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${DRIVERPILOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driverpilot}/kernel-matrix"
BUILD="$CACHE/build"
RUNS="$CACHE/runs"

log() { echo "kernel-matrix: $*" >&2; }
die() { echo "kernel-matrix: error: $*" >&2; exit 1; }

for tool in qemu-system-x86_64 cpio dpkg-deb apt-get modinfo timeout go; do
  command -v "$tool" >/dev/null || die "$tool not found; run hack/deps.sh (as root) to install the pinned packages"
done
OBJCOPY="$(command -v llvm-objcopy || command -v objcopy || true)"
[ -n "$OBJCOPY" ] || die "llvm-objcopy not found; run hack/deps.sh (as root) to install llvm"
mkdir -p "$CACHE/debs" "$CACHE/kernels" "$BUILD" "$RUNS"

# fetch_kernel PKG: downloads PKG=KERNEL_PKG_VERSION into the cache once and unpacks it once.
# Prints the unpacked tree's path.
fetch_kernel() {
  local pkg="$1" deb="$CACHE/debs/${1}_${KERNEL_PKG_VERSION}_amd64.deb"
  local tree="$CACHE/kernels/${1}_${KERNEL_PKG_VERSION}"
  if [ ! -s "$deb" ]; then
    log "downloading $pkg=$KERNEL_PKG_VERSION"
    local tmp; tmp="$(mktemp -d "$CACHE/debs/.dl.XXXXXX")"
    if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$KERNEL_PKG_VERSION" >&2); then
      log "download of $pkg=$KERNEL_PKG_VERSION failed; refreshing the package lists and retrying"
      apt-get update -qq >&2 || true
      (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$KERNEL_PKG_VERSION" >&2) || {
        rm -rf "$tmp"
        die "download of package $pkg=$KERNEL_PKG_VERSION failed (is the pinned version still on the mirror? see: apt-cache policy $pkg)"
      }
    fi
    mv "$tmp"/*.deb "$deb" && rm -rf "$tmp"
  fi
  if [ ! -e "$tree/.unpacked" ]; then
    log "unpacking $(basename "$deb")"
    rm -rf "$tree" "$tree.tmp"
    dpkg-deb -x "$deb" "$tree.tmp" || die "dpkg-deb -x $deb failed (delete it to download again)"
    touch "$tree.tmp/.unpacked" && mv "$tree.tmp" "$tree"
  fi
  echo "$tree"
}

# module_files TREE RELEASE NAME: the module NAME and its dependencies, dependencies first.
module_files() {
  local tree="$1" release="$2" name="$3" file dep
  file="$(find "$tree/lib/modules/$release/kernel" -name "$name.ko*" -o -name "${name//_/-}.ko*" | head -n1)"
  [ -n "$file" ] || die "module $name not found in $tree/lib/modules/$release"
  for dep in $(modinfo -F depends "$file" | tr ',' ' '); do
    module_files "$tree" "$release" "$dep"
  done
  echo "$file"
}

# build_initramfs TREE RELEASE OUT VARIANT: a newc cpio with /init, /bin/driverpilot and the overlay
# module (without its .BTF section for the no-overlay-btf variant).
build_initramfs() {
  local tree="$1" release="$2" out="$3" variant="$4" stage="$3.d" f base modules
  rm -rf "$stage" && mkdir -p "$stage"/{bin,dev,proc,sys,tmp,run,work,etc,lib/modules}
  install -m 0755 "$BUILD/init" "$stage/init"
  install -m 0755 "$BUILD/driverpilot" "$stage/bin/driverpilot"
  # The kernel's built-in initramfs has /dev/console too; ours makes sure of it where we may mknod.
  mknod -m 0600 "$stage/dev/console" c 5 1 2>/dev/null || true
  : >"$stage/lib/modules/load-order"
  modules="$(module_files "$tree" "$release" overlay)" # fails the script when a module is missing
  for f in $(awk '!seen[$0]++' <<<"$modules"); do
    base="$(basename "$f")"
    case "$base" in
      *.ko.xz)  xz -dc "$f" >"$stage/lib/modules/${base%.xz}"; base="${base%.xz}" ;;
      *.ko.zst) zstd -qdc "$f" >"$stage/lib/modules/${base%.zst}"; base="${base%.zst}" ;;
      *.ko.gz)  gzip -dc "$f" >"$stage/lib/modules/${base%.gz}"; base="${base%.gz}" ;;
      *.ko)     cp "$f" "$stage/lib/modules/$base" ;;
      *)        die "unknown module file $f" ;;
    esac
    if [ "$variant" = no-overlay-btf ] && [ "$base" = overlay.ko ]; then
      # Drops the appended signature too; Debian's 6.1 does not force module signatures.
      "$OBJCOPY" --remove-section=.BTF "$stage/lib/modules/$base" || die "strip .BTF from $base failed"
    fi
    echo "/lib/modules/$base" >>"$stage/lib/modules/load-order"
  done
  (cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) >"$out.tmp"
  mv "$out.tmp" "$out" && rm -rf "$stage"
}

# 1. The guest's binaries, built from this tree (the Go build cache makes a rebuild cheap).
log "building static driverpilot and /init"
(cd "$ROOT" &&
  CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$BUILD/driverpilot" ./cmd/driverpilot &&
  CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$BUILD/init" ./hack/kernel-matrix/init &&
  go build -o "$BUILD/report" ./hack/kernel-matrix/report) || die "go build failed"

# 2. One boot per flavour.
manifest="$RUNS/manifest.tsv"
: >"$manifest"
for entry in "${FLAVOURS[@]}"; do
  flavour="${entry%%:*}" variant=""
  [ "$entry" = "$flavour" ] || variant="${entry#*:}"
  case "$variant" in
    "") name="$KERNEL_ABI-$flavour" expect="overlay-btf=true" ;;
    no-overlay-btf) name="$KERNEL_ABI-$flavour/$variant" expect="overlay-btf=false" ;;
    *) die "unknown variant $variant in $entry (known: no-overlay-btf)" ;;
  esac
  release="$KERNEL_ABI-$flavour"
  pkg="linux-image-$release-unsigned"
  tree="$(fetch_kernel "$pkg")"
  vmlinuz="$tree/boot/vmlinuz-$release"
  [ -f "$vmlinuz" ] || die "$pkg has no boot/vmlinuz-$release"
  run="$RUNS/${name//\//-}"
  mkdir -p "$run"
  build_initramfs "$tree" "$release" "$run/initramfs.cpio" "$variant"
  nonce="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
  console="$run/console.log"
  log "booting $name (qemu -accel tcg, timeout ${TIMEOUT}s; console: $console)"
  start="$(date +%s.%N)"
  rc=0
  qemu=(qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 1G -nographic -no-reboot -nic none
    -kernel "$vmlinuz" -initrd "$run/initramfs.cpio"
    -append "console=ttyS0 panic=-1 loglevel=${KERNEL_MATRIX_LOGLEVEL:-4} dpmatrix.nonce=$nonce dpmatrix.drivers=$DRIVERS dpmatrix.checks=$CHECKS dpmatrix.timeout=$SELFTEST_TIMEOUT")
  if [ "${KERNEL_MATRIX_VERBOSE:-0}" = 1 ]; then
    timeout --kill-after=10 "$TIMEOUT" "${qemu[@]}" </dev/null 2>&1 | tee "$console" >&2 || rc="${PIPESTATUS[0]}"
  else
    timeout --kill-after=10 "$TIMEOUT" "${qemu[@]}" </dev/null >"$console" 2>&1 || rc=$?
  fi
  wall="$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN{printf "%.1f", a-b}')"
  log "$name: qemu exited $rc after ${wall%.*}s"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$nonce" "$wall" "$rc" "$console" "$expect" >>"$manifest"
done

# 3. The table and the verdict.
echo >&2
rc=0
"$BUILD/report" -drivers "$DRIVERS" -checks "$CHECKS" "$manifest" || rc=$?
log "console logs: $RUNS/<kernel>/console.log"
exit "$rc"
