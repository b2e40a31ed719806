#!/usr/bin/env bash
# Boots Debian kernels of three generations (bullseye 5.10, bookworm 6.1, trixie 6.12), amd64 and
# arm64, under qemu (TCG) with an initramfs holding a static Go /init (hack/kernel-matrix/init) and
# the static driverpilot binary, and runs the same /init on this machine's own kernel (the host cell).
# Each cell prints what `driverpilot probe` finds and decides, runs `driverpilot selftest` with every
# driver and all four checks, and, in the first cell of each generation and architecture, runs the
# self-test again with injected sensor faults, which must fail it. This script then prints the tables
# (hack/kernel-matrix/report) and exits non-zero unless every cell passed, the selection engine's
# first driver passed on every kernel and every fault was caught. See hack/kernel-matrix/README.md.
#
# Environment:
#   KERNEL_MATRIX_KERNELS    cells, each GEN/FLAVOUR[:VARIANT] or "host" (default below). GEN is
#                            5.10, 6.1 or 6.12; FLAVOUR a Debian flavour (amd64, cloud-amd64,
#                            rt-amd64, arm64, cloud-arm64); VARIANT no-overlay-btf strips .BTF from
#                            overlay.ko (the falco#3286 situation on a kernel that has module BTF).
#   KERNEL_MATRIX_FAULTS     faults injected in the first cell of each generation and architecture
#                            and in the host cell (default "all-lower,drop-events"; "" for none)
#   KERNEL_MATRIX_FAULT_DRIVERS  drivers the faults run with (default: the first of KERNEL_MATRIX_DRIVERS;
#                            the faults sit in user space, after the driver)
#   KERNEL_MATRIX_DRIVERS    default "modern_ebpf,ebpf"
#   KERNEL_MATRIX_CHECKS     default "ExeUpperLayer,ExeLowerLayer,ExeCopyUp,ExeFromMemfd"
#   KERNEL_MATRIX_JOBS       boots run at once (default 2: TCG runs one vCPU per thread)
#   KERNEL_MATRIX_TIMEOUT    seconds one boot may take, boot to power-off (default 600)
#   KERNEL_MATRIX_VERBOSE=1  copy each serial console to stderr while it runs (use with JOBS=1)
#   KERNEL_MATRIX_UPDATE_README=1  replace the kernel table in hack/kernel-matrix/README.md with
#                            this run's (it is always written to $RUNS/kernel-table.md)
#   KERNEL_MATRIX_LOGLEVEL   console loglevel (default 4: warnings and worse, which keeps kernel
#                            lines out of the results; a panic still shows). 8 to debug a boot.
#   DRIVERPILOT_CACHE        cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/driverpilot)
set -euo pipefail

# Pinned kernels, one per generation: ABI and package version. Change both together (README:
# "Moving a pin"). Each suite below holds its generation's pin: bullseye's last point release
# (frozen), bookworm-security, trixie's current point release.
declare -A KERNEL_ABI=([5.10]="5.10.0-32" [6.1]="6.1.0-56" [6.12]="6.12.117+deb13")
declare -A KERNEL_PKG_VERSION=([5.10]="5.10.223-1" [6.1]="6.1.192-2" [6.12]="6.12.117-1")
# The Debian release each generation ships with: the guest's /etc/os-release, for the probe's distro fact.
declare -A DEBIAN_RELEASE=([5.10]="11 bullseye" [6.1]="12 bookworm" [6.12]="13 trixie")
APT_SOURCES=(
  "http://deb.debian.org/debian bullseye main"
  "http://deb.debian.org/debian-security bookworm-security main"
  "http://deb.debian.org/debian trixie main"
)

# The no-overlay-btf variants reuse a kernel already fetched: they make the inode offset decide
# (not only agree) on the 6.1 and 6.12 layouts.
DEFAULT_KERNELS="5.10/amd64 5.10/cloud-amd64 6.1/amd64 6.1/cloud-amd64 6.1/amd64:no-overlay-btf 6.12/amd64 6.12/cloud-amd64 6.12/amd64:no-overlay-btf 6.12/arm64 host"
read -r -a KERNELS <<<"${KERNEL_MATRIX_KERNELS:-$DEFAULT_KERNELS}"
FAULTS="${KERNEL_MATRIX_FAULTS-all-lower,drop-events}"
DRIVERS="${KERNEL_MATRIX_DRIVERS:-modern_ebpf,ebpf}"
FAULT_DRIVERS="${KERNEL_MATRIX_FAULT_DRIVERS:-${DRIVERS%%,*}}"
CHECKS="${KERNEL_MATRIX_CHECKS:-ExeUpperLayer,ExeLowerLayer,ExeCopyUp,ExeFromMemfd}"
JOBS="${KERNEL_MATRIX_JOBS:-2}"
TIMEOUT="${KERNEL_MATRIX_TIMEOUT:-600}"
# Every self-test run in the guest gets this much of the boot's budget, at most.
SELFTEST_TIMEOUT="$(( (TIMEOUT - 60) / 2 ))s"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${DRIVERPILOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driverpilot}/kernel-matrix"
BUILD="$CACHE/build"
RUNS="$CACHE/runs"
APTDIR="$CACHE/apt"

START_ALL="$(date +%s)"
log() { echo "kernel-matrix: [+$(( $(date +%s) - START_ALL ))s] $*" >&2; }
die() { echo "kernel-matrix: error: $*" >&2; exit 1; }

for tool in qemu-system-x86_64 qemu-system-aarch64 cpio dpkg-deb apt-get modinfo timeout go xz zstd; do
  command -v "$tool" >/dev/null || die "$tool not found; run hack/deps.sh (as root) to install the pinned packages"
done
OBJCOPY="$(command -v llvm-objcopy || command -v objcopy || true)"
[ -n "$OBJCOPY" ] || die "llvm-objcopy not found; run hack/deps.sh (as root) to install llvm"
mkdir -p "$CACHE/debs" "$CACHE/kernels" "$BUILD" "$RUNS"

# arch_of FLAVOUR: the Debian (and GOARCH) architecture of a flavour.
arch_of() { case "$1" in *arm64*) echo arm64 ;; *) echo amd64 ;; esac; }

# The private apt: its own sources list, lists, cache and status, for amd64 and arm64, so the
# machine's apt setup is neither used nor changed.
APT=(-o "Dir::Etc::SourceList=$APTDIR/sources.list" -o "Dir::Etc::SourceParts=$APTDIR/none"
  -o "Dir::Etc::Preferences=$APTDIR/none" -o "Dir::Etc::PreferencesParts=$APTDIR/none"
  -o "Dir::State=$APTDIR/state" -o "Dir::State::Status=$APTDIR/state/status" -o "Dir::Cache=$APTDIR/cache"
  -o "APT::Architecture=amd64" -o "APT::Architectures::=amd64" -o "APT::Architectures::=arm64"
  -o "Acquire::Languages=none" -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false" -o "APT::Sandbox::User=root" -q)
apt_update() {
  mkdir -p "$APTDIR/state/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/none"
  touch "$APTDIR/state/status"
  local src
  for src in "${APT_SOURCES[@]}"; do
    echo "deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $src"
  done >"$APTDIR/sources.list"
  log "refreshing the private package lists ($APTDIR)"
  apt-get "${APT[@]}" update >&2 || die "apt-get update (private sources list $APTDIR/sources.list) failed"
}

# fetch_kernels GEN/FLAVOUR...: downloads the pinned packages not cached yet, all in one apt call.
fetch_kernels() {
  local want=() gen flavour arch pkg ver
  for cell in "$@"; do
    gen="${cell%%/*}" flavour="${cell#*/}"; arch="$(arch_of "$flavour")"
    pkg="linux-image-${KERNEL_ABI[$gen]}-$flavour-unsigned" ver="${KERNEL_PKG_VERSION[$gen]}"
    [ -s "$CACHE/debs/${pkg}_${ver}_$arch.deb" ] || want+=("$pkg:$arch=$ver")
  done
  [ ${#want[@]} -gt 0 ] || return 0
  [ -d "$APTDIR/state/lists" ] && [ "$APTDIR/sources.list" -nt "${BASH_SOURCE[0]}" ] || apt_update
  local tmp; tmp="$(mktemp -d "$CACHE/debs/.dl.XXXXXX")"
  log "downloading ${want[*]}"
  if ! (cd "$tmp" && apt-get "${APT[@]}" download "${want[@]}" >&2); then
    apt_update
    (cd "$tmp" && apt-get "${APT[@]}" download "${want[@]}" >&2) || {
      rm -rf "$tmp"
      die "download of ${want[*]} failed (a pinned version is no longer on the mirror? see README: Moving a pin)"
    }
  fi
  local f
  for f in "$tmp"/*.deb; do mv "$f" "$CACHE/debs/$(basename "${f//%2b/+}")"; done
  rm -rf "$tmp"
}

# unpack_kernel GEN FLAVOUR: the kernel image and its filesystem modules, unpacked once. Prints the tree.
unpack_kernel() {
  local gen="$1" flavour="$2" arch; arch="$(arch_of "$flavour")"
  local pkg="linux-image-${KERNEL_ABI[$gen]}-$flavour-unsigned" ver="${KERNEL_PKG_VERSION[$gen]}"
  local deb="$CACHE/debs/${pkg}_${ver}_$arch.deb" tree="$CACHE/kernels/${pkg}_${ver}"
  [ -s "$deb" ] || die "$deb missing after the download"
  if [ ! -e "$tree/.unpacked" ]; then
    log "unpacking $(basename "$deb") (boot/ and kernel/fs/ only)"
    rm -rf "$tree" "$tree.tmp" && mkdir -p "$tree.tmp"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tree.tmp" --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/fs/*' \
      './usr/lib/modules/*/kernel/fs/*' 2>/dev/null || true
    ls "$tree.tmp"/boot/vmlinuz-* >/dev/null 2>&1 || die "dpkg-deb $deb: no boot/vmlinuz (delete it to download again)"
    touch "$tree.tmp/.unpacked" && mv "$tree.tmp" "$tree"
  fi
  echo "$tree"
}

# module_files TREE RELEASE NAME: the module NAME and its dependencies, dependencies first.
module_files() {
  local tree="$1" release="$2" name="$3" file dep dir
  for dir in "$tree/lib/modules/$release/kernel" "$tree/usr/lib/modules/$release/kernel"; do
    [ -d "$dir" ] || continue
    file="$(find "$dir" -name "$name.ko*" -o -name "${name//_/-}.ko*" | head -n1)"
    [ -z "$file" ] || break
  done
  [ -n "$file" ] || die "module $name not found in $tree (only kernel/fs/ is unpacked; widen unpack_kernel)"
  for dep in $(modinfo -F depends "$file" | tr ',' ' '); do
    module_files "$tree" "$release" "$dep"
  done
  echo "$file"
}

# build_initramfs TREE RELEASE ARCH OUT VARIANT GEN: a newc cpio with /init, /bin/driverpilot, the
# overlay module (without its .BTF section for the no-overlay-btf variant) and the os-release of the
# Debian release the kernel belongs to.
build_initramfs() {
  local tree="$1" release="$2" arch="$3" out="$4" variant="$5" gen="$6" stage="$4.d" f base modules
  rm -rf "$stage" && mkdir -p "$stage"/{bin,dev,proc,sys,tmp,run,work,etc,lib/modules}
  local deb_version="${DEBIAN_RELEASE[$gen]% *}" deb_codename="${DEBIAN_RELEASE[$gen]#* }"
  printf 'PRETTY_NAME="Debian GNU/Linux %s (%s)"\nNAME="Debian GNU/Linux"\nVERSION_ID="%s"\nVERSION_CODENAME=%s\nID=debian\n' \
    "$deb_version" "$deb_codename" "$deb_version" "$deb_codename" >"$stage/etc/os-release"
  install -m 0755 "$BUILD/$arch/init" "$stage/init"
  install -m 0755 "$BUILD/$arch/driverpilot" "$stage/bin/driverpilot"
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
      # Drops the appended signature too; Debian's kernels do not force module signatures.
      "$OBJCOPY" --remove-section=.BTF "$stage/lib/modules/$base" || die "strip .BTF from $base failed"
    fi
    echo "/lib/modules/$base" >>"$stage/lib/modules/load-order"
  done
  (cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) >"$out.tmp"
  mv "$out.tmp" "$out" && rm -rf "$stage"
}

# 1. The cells: name, what they expect, which get faults (the first of each generation and arch).
declare -A seen_gen=()
cells=() need=() archs=()
for entry in "${KERNELS[@]}"; do
  [ "$entry" != host ] || { cells+=("host"); continue; }
  [[ "$entry" == */* ]] || die "bad cell $entry (want GEN/FLAVOUR[:VARIANT] or host)"
  gen="${entry%%/*}" rest="${entry#*/}"; flavour="${rest%%:*}" variant=""
  [ "$rest" = "$flavour" ] || variant="${rest#*:}"
  [ -n "${KERNEL_ABI[$gen]:-}" ] || die "unknown generation $gen in $entry (known: ${!KERNEL_ABI[*]})"
  case "$variant" in ""|no-overlay-btf) ;; *) die "unknown variant $variant in $entry (known: no-overlay-btf)" ;; esac
  cells+=("$entry") need+=("$gen/$flavour")
  archs+=("$(arch_of "$flavour")")
done
archs+=("$(go env GOARCH)") # the host cell

# 2. The kernels download and unpack (network and one core) while the binaries build, per
# architecture, from this tree (the Go build cache makes a rebuild cheap; a cold arm64 build is
# the longest step of a cold run). The flags compile like `make build` and `make build-arm64`
# (-trimpath; -ldflags only changes the link), so after those only the links are left.
prepare_kernels() {
  [ ${#need[@]} -gt 0 ] || return 0
  fetch_kernels "${need[@]}"
  local cell
  for cell in $(printf '%s\n' "${need[@]}" | sort -u); do unpack_kernel "${cell%%/*}" "${cell#*/}" >/dev/null; done
}
# A failed build must not leave the download or a boot running behind it.
trap 'kill $(jobs -rp) 2>/dev/null || true' EXIT
prepare_kernels &
prepare_pid=$!
host_arch="$(go env GOARCH)"
for arch in $(printf '%s\n' "${archs[@]}" | sort -u); do
  # The host's architecture runs the binary `make build` ships; another architecture runs the
  # matrixguest build (probe and selftest only, the same packages for them, a third of the compile).
  tags=matrixguest
  [ "$arch" != "$host_arch" ] || tags=""
  log "building static driverpilot${tags:+ (-tags $tags)} and /init for $arch"
  mkdir -p "$BUILD/$arch"
  (cd "$ROOT" &&
    CGO_ENABLED=0 GOARCH="$arch" go build -trimpath -tags "$tags" -ldflags '-s -w' -o "$BUILD/$arch/driverpilot" ./cmd/driverpilot &&
    CGO_ENABLED=0 GOARCH="$arch" go build -trimpath -ldflags '-s -w' -o "$BUILD/$arch/init" ./hack/kernel-matrix/init) ||
    die "go build for $arch failed"
done
(cd "$ROOT" && go build -o "$BUILD/report" ./hack/kernel-matrix/report) || die "go build report failed"
log "binaries built"
wait "$prepare_pid" || die "fetching or unpacking the kernels failed (see above)"

# 3. The initramfs images.
manifest="$RUNS/manifest.tsv"
: >"$manifest"
jobs_file="$RUNS/jobs.tsv"
: >"$jobs_file"
for entry in "${cells[@]}"; do
  nonce="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
  if [ "$entry" = host ]; then
    name="host-$(uname -r)" faults="$FAULTS"
    run="$RUNS/host"; mkdir -p "$run"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' host "$name" "$nonce" "$run" - "${faults:--}" - - >>"$jobs_file"
    continue
  fi
  gen="${entry%%/*}" rest="${entry#*/}"; flavour="${rest%%:*}" variant=""
  [ "$rest" = "$flavour" ] || variant="${rest#*:}"
  arch="$(arch_of "$flavour")" release="${KERNEL_ABI[$gen]}-$flavour"
  name="$release${variant:+/$variant}"
  expect="overlay-btf=true"
  # 5.10 has no module BTF at all (CONFIG_DEBUG_INFO_BTF_MODULES came with 5.11): falco#3286 on a stock kernel.
  [ "$gen" != 5.10 ] && [ "$variant" != no-overlay-btf ] || expect="overlay-btf=false"
  faults=""
  if [ -n "$FAULTS" ] && [ -z "${seen_gen[$gen/$arch]:-}" ]; then faults="$FAULTS"; seen_gen[$gen/$arch]=1; fi
  tree="$(unpack_kernel "$gen" "$flavour")"
  vmlinuz="$tree/boot/vmlinuz-$release"
  [ -f "$vmlinuz" ] || die "linux-image-$release-unsigned has no boot/vmlinuz-$release"
  run="$RUNS/${name//\//-}"
  mkdir -p "$run"
  build_initramfs "$tree" "$release" "$arch" "$run/initramfs.cpio" "$variant" "$gen"
  append="panic=-1 loglevel=${KERNEL_MATRIX_LOGLEVEL:-4} dpmatrix.nonce=$nonce dpmatrix.drivers=$DRIVERS dpmatrix.checks=$CHECKS dpmatrix.timeout=$SELFTEST_TIMEOUT${faults:+ dpmatrix.faults=$faults dpmatrix.faultdrivers=$FAULT_DRIVERS}"
  # Tab-separated, "-" for empty: read collapses adjacent tabs.
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$arch" "$name" "$nonce" "$run" "$expect" "${faults:--}" "$vmlinuz" "$append" >>"$jobs_file"
done

# boot ARCH NAME NONCE RUN EXPECT FAULTS VMLINUZ APPEND: one qemu boot (or the host cell, ARCH
# host); writes its manifest line to RUN/manifest.line.
boot() {
  local arch="$1" name="$2" nonce="$3" run="$4" expect="$5" faults="$6" vmlinuz="$7" append="$8" rc=0 start wall qemu opts=""
  [ "$expect" = - ] || opts="$expect"
  [ "$faults" = - ] || opts="${opts:+$opts	}faults=$faults	fault-drivers=$FAULT_DRIVERS"
  local console="$run/console.log"
  start="$(date +%s.%N)"
  if [ "$arch" = host ]; then
    log "running the host cell on $(uname -r) (console: $console)"
    if [ "$(id -u)" -ne 0 ]; then
      echo "the host cell needs root (BPF and mounts)" >"$console"; rc=1
    else
      timeout --kill-after=10 "$TIMEOUT" "$BUILD/$host_arch/init" -nonce "$nonce" -drivers "$DRIVERS" -checks "$CHECKS" \
        -timeout "$SELFTEST_TIMEOUT" -faults "${faults#-}" -fault-drivers "$FAULT_DRIVERS" -driverpilot "$BUILD/$host_arch/driverpilot" -workdir "$run" \
        </dev/null >"$console" 2>"$run/stderr.log" || rc=$?
    fi
  else
    case "$arch" in
      amd64) qemu=(qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 1G -append "console=ttyS0 $append") ;;
      # pauth-impdef: TCG emulates QARMA5 pointer authentication slowly; the kernel does not care.
      arm64) qemu=(qemu-system-aarch64 -M virt -accel tcg -cpu max,pauth-impdef=on -smp 1 -m 1G -append "console=ttyAMA0 $append") ;;
    esac
    qemu+=(-nographic -no-reboot -nic none -kernel "$vmlinuz" -initrd "$run/initramfs.cpio")
    log "booting $name (qemu-$arch -accel tcg, timeout ${TIMEOUT}s; console: $console)"
    if [ "${KERNEL_MATRIX_VERBOSE:-0}" = 1 ]; then
      timeout --kill-after=10 "$TIMEOUT" "${qemu[@]}" </dev/null 2>&1 | tee "$console" >&2 || rc="${PIPESTATUS[0]}"
    else
      timeout --kill-after=10 "$TIMEOUT" "${qemu[@]}" </dev/null >"$console" 2>&1 || rc=$?
    fi
  fi
  wall="$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN{printf "%.1f", a-b}')"
  log "$name: exited $rc after ${wall%.*}s"
  # One short write per line: parallel boots append whole lines.
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$nonce" "$wall" "$rc" "$console" "$opts" >>"$run/manifest.line"
}

# 4. The boots, JOBS at a time; the manifest keeps the cells' order.
log "running ${#cells[@]} cells, $JOBS at a time"
while IFS=$'\t' read -r arch name nonce run expect faults vmlinuz append; do
  rm -f "$run/manifest.line"
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  boot "$arch" "$name" "$nonce" "$run" "$expect" "$faults" "$vmlinuz" "$append" &
done <"$jobs_file"
wait
while IFS=$'\t' read -r arch name nonce run _; do
  if [ -s "$run/manifest.line" ]; then cat "$run/manifest.line"; else printf '%s\t%s\t0\t1\t%s\n' "$name" "$nonce" "$run/console.log"; fi
done <"$jobs_file" >"$manifest"

# 5. The tables and the verdict.
echo >&2
rc=0
"$BUILD/report" -drivers "$DRIVERS" -checks "$CHECKS" -markdown "$RUNS/kernel-table.md" "$manifest" || rc=$?
if [ "${KERNEL_MATRIX_UPDATE_README:-0}" = 1 ]; then
  readme="$ROOT/hack/kernel-matrix/README.md"
  awk -v table="$RUNS/kernel-table.md" -v when="$(date -u +%Y-%m-%d), $(uname -m) host, $(( $(date +%s) - START_ALL ))s" '
    /<!-- BEGIN kernel-table -->/ { print; print "<!-- generated by KERNEL_MATRIX_UPDATE_README=1 make kernel-matrix (" when "); do not edit -->"; while ((getline l < table) > 0) print l; skip = 1; next }
    /<!-- END kernel-table -->/ { skip = 0 }
    !skip { print }' "$readme" >"$readme.tmp" && mv "$readme.tmp" "$readme"
  log "updated the kernel table in $readme"
fi
log "console logs: $RUNS/<kernel>/console.log; whole matrix took $(( $(date +%s) - START_ALL ))s"
exit "$rc"
