#!/usr/bin/env bash
# Fetches the Falco source trees the project builds (issue #20), verifies each archive by the commit
# id git archive embeds, and caches it outside the clone keyed by tag. Sources come from upstream, or
# from DRIVERPILOT_MIRROR (default ../shared/mirror beside the repository when it exists), laid out
# like their URLs. Only this first stage exists so far: the build stage is not written yet.
# Prints the sources directory on its last line of stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE_ROOT="${DRIVERPILOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driverpilot}"
SRC="$CACHE_ROOT/falco/src"
if [ -z "${DRIVERPILOT_MIRROR:-}" ] && [ -d "$ROOT/../shared/mirror" ]; then
  DRIVERPILOT_MIRROR="$(cd "$ROOT/../shared/mirror" && pwd)"
fi
MIRROR="${DRIVERPILOT_MIRROR:-}"

log() { echo "falco-assets: $*" >&2; }
die() { echo "falco-assets: error: $*" >&2; exit 1; }

# owner/repo tag commit: the pins, one archive each (the mirror's README lists the same table).
PINS="
falcosecurity/falco 0.38.1 2820cd1d074c7c2b075a92ec33946fb9e8573bdc
falcosecurity/falco 0.38.2 35ee18c435b9c9a48773e14b59c038bd33ab6bcb
falcosecurity/falco 0.44.1 f1ac5eb1a1c9da9f797f799121ab700263621443
falcosecurity/libs 0.17.2 fbf3b363999971489e67dc51741022e7f9cb4dba
falcosecurity/libs 0.17.3 267ab11e02e02d48ce0cc21a7affa6fe3a99052e
falcosecurity/libs 0.25.4 80e695f6b123c26574cbc0f9230b33c911c71c49
falcosecurity/libs 7.2.0+driver c7276a354a92e3597868b115ede7fc2efacc4f3d
falcosecurity/libs 7.2.1+driver e04952304d4e8d7066621a15c25f30df5be7e00d
falcosecurity/libs 10.2.0+driver 296aedabe763db465934722e5f7ca21c2d1d3596
falcosecurity/rules falco-rules-3.1.0 9e56293b55dac24c8f124b5b7aebfec07a6b4f5e
falcosecurity/rules falco-rules-5.1.0 6cbb113dd3fbcaf157c077414a57d2180f3e0eec
falcosecurity/plugins plugins/container/v0.7.1 21d3ee6df859604a93f3ff41e9b9f0b56495740e
falcosecurity/plugin-sdk-cpp 0.3.0 89e9965833b3dbccba94a359892c784d4ec69a57
Genivia/RE-flex v5.3.0 dd84adc0872f7b827528af8c96d529c9cae0a839
fmtlib/fmt 11.1.4 123913715afeb8a437e6388b4473fcc4753e1c9a
kdave/btrfs-progs v6.13 26e4d9174c70aac0e53c3b5de55cf159f8d9397f
libbpf/libbpf v1.3.0 20c0a9e3d7e7d4aeb283eae982543c9cacc29477
tristanpenman/valijson v1.0.2 0b4771e273a065d437814baf426bcfcafec0f434
"

mkdir -p "$SRC"
exec 9>"$SRC/.lock"
if ! flock -n 9; then log "another run holds $SRC/.lock; waiting"; flock 9; fi

# fetch OWNER/REPO TAG COMMIT: extracts into $SRC/REPO/TAG (slashes and + as -), verified.
fetch() {
  local repo="$1" tag="$2" commit="$3"
  local dir="$SRC/${repo#*/}/$(echo "$tag" | tr '/+' '--')"
  [ -f "$dir/.commit" ] && [ "$(cat "$dir/.commit")" = "$commit" ] && { log "$repo $tag cached"; return; }
  local url="https://github.com/$repo/archive/refs/tags/$tag.tar.gz"
  tmp="$(mktemp -d "$SRC/.fetch.XXXXXX")"
  if [ -n "$MIRROR" ]; then
    log "$repo $tag from the mirror"
    cp "$MIRROR/${url#https://}" "$tmp/a.tar.gz" || die "$url is not in the mirror $MIRROR"
  else
    log "$repo $tag from $url"
    curl -fsSL -o "$tmp/a.tar.gz" "$url" || die "download of $url failed"
  fi
  local got; got="$(zcat "$tmp/a.tar.gz" | git get-tar-commit-id || true)"
  [ "$got" = "$commit" ] || die "$repo $tag: archive commit '$got', want $commit"
  mkdir "$tmp/x" && tar -C "$tmp/x" --strip-components=1 -xzf "$tmp/a.tar.gz"
  echo "$commit" >"$tmp/x/.commit"
  rm -rf "$dir"; mkdir -p "$(dirname "$dir")"; mv "$tmp/x" "$dir"
  rm -rf "$tmp"; tmp=
}
# A failed or interrupted fetch leaves no partial tree in the cache.
tmp=
trap 'rm -rf "${tmp:-}"' EXIT

while read -r repo tag commit; do
  [ -n "$repo" ] && fetch "$repo" "$tag" "$commit"
done <<<"$PINS"
echo "$SRC"
