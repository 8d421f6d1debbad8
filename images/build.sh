#!/usr/bin/env bash
# Build carpool's images from images/Containerfile: `make images` runs this.
#
#   images/build.sh [operator] [worker]     (default: both)
#
# The build's log goes to stderr; stdout gets one line per image built, `TARGET=NAME:TAG`.
#
# The base is Debian bookworm made by `debootstrap --variant=minbase` (as root) and loaded with
# `podman import`; nothing is pulled from a registry. The base's tarball is cached under
# ~/.cache/carpool/images/ and remade when older than CARPOOL_BASE_MAX_AGE_DAYS, so its
# packages stay current; podman's layer cache and a wheelhouse mounted into the build
# (~/.cache/carpool/images/wheels) make a second run fast. The images are tagged with the chart's appVersion.
#
# Environment (all optional):
#   CARPOOL_IMAGE_ENGINE       podman (default, through images/podman.sh) or docker
#   CARPOOL_OPERATOR_IMAGE     default ghcr.io/carpool-dev/carpool-operator:<appVersion>
#   CARPOOL_WORKER_IMAGE       default ghcr.io/carpool-dev/carpool-worker:<appVersion>
#   CARPOOL_BASE_IMAGE         a Debian 12 image to build on instead of the debootstrap base
#   CARPOOL_BASE_MAX_AGE_DAYS  remake the debootstrap base after this many days (default 30)
#   CARPOOL_DEBIAN_MIRROR      default http://deb.debian.org/debian
#   CARPOOL_DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
#   CARPOOL_CACHE_DIR          default ~/.cache/carpool
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CONTAINERFILE="$HERE/Containerfile"
IGNOREFILE="$HERE/Containerfile.dockerignore"
CHART_YAML="$ROOT/charts/carpool/Chart.yaml"

ENGINE="${CARPOOL_IMAGE_ENGINE:-podman}"
CACHE="${CARPOOL_CACHE_DIR:-$HOME/.cache/carpool}/images"
MAX_AGE_DAYS="${CARPOOL_BASE_MAX_AGE_DAYS:-30}"
MIRROR="${CARPOOL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${CARPOOL_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$CHART_YAML")"
OPERATOR_IMAGE="${CARPOOL_OPERATOR_IMAGE:-ghcr.io/carpool-dev/carpool-operator:$APP_VERSION}"
WORKER_IMAGE="${CARPOOL_WORKER_IMAGE:-ghcr.io/carpool-dev/carpool-worker:$APP_VERSION}"
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
BUILD_MOUNTS=/run/carpool-build

say() { printf '[images] %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

case $ENGINE in
  podman) ENGINE_CMD=("$HERE/podman.sh") ;;
  docker) ENGINE_CMD=(docker) ;;
  *) die "CARPOOL_IMAGE_ENGINE must be podman or docker, not '$ENGINE'" ;;
esac
[[ -n $APP_VERSION ]] || die "no appVersion in $CHART_YAML"
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(operator worker)
for target in "${TARGETS[@]}"; do
  [[ $target == operator || $target == worker ]] || die "unknown image '$target'"
done

# The newest cached base tarball younger than MAX_AGE_DAYS, or a new one.
base_tarball() {
  local newest
  newest="$(find "$CACHE" -maxdepth 1 -name 'debian-bookworm-minbase-*.tar' \
    -mtime "-$MAX_AGE_DAYS" 2>/dev/null | sort | tail -n 1)"
  if [[ -n $newest ]]; then
    printf '%s\n' "$newest"
    return
  fi
  [[ $(id -u) == 0 ]] || die "debootstrap needs root (or set CARPOOL_BASE_IMAGE)"
  command -v debootstrap >/dev/null || die "debootstrap is not installed: run 'make image-tools'"
  local tarball rootfs
  tarball="$CACHE/debian-bookworm-minbase-$(date -u +%Y%m%d).tar"
  rootfs="$(mktemp -d "${TMPDIR:-/tmp}/carpool-rootfs.XXXXXX")"
  # shellcheck disable=SC2064 # expand $rootfs now
  trap "release_rootfs '$rootfs'" EXIT
  say "debootstrap --variant=minbase bookworm ($MIRROR)"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || {
    tail -n 20 "$rootfs.log" >&2
    die "debootstrap failed (log above)"
  }
  slim_rootfs "$rootfs"
  mkdir -p "$CACHE"
  tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  find "$CACHE" -maxdepth 1 -name 'debian-bookworm-minbase-*.tar' ! -path "$tarball" -delete
  release_rootfs "$rootfs"
  trap - EXIT
  printf '%s\n' "$tarball"
}

# Security updates on, and no documentation, manuals, locales or package lists in the image
# (what Debian's slim images leave out too).
slim_rootfs() {
  local rootfs=$1
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/carpool-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/carpool-slim" <<'EOF'
APT::Install-Recommends "false";
Acquire::Languages "none";
Binary::apt::APT::Keep-Downloaded-Packages "false";
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
}

# Unmount what debootstrap may have left mounted (on failure), then delete the tree.
# shellcheck disable=SC2317,SC2329 # also run by a trap
release_rootfs() {
  local rootfs=$1 mount
  while read -r mount; do
    umount -l "$mount" || true
  done < <(awk -v root="$rootfs/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r)
  rm -rf --one-file-system "$rootfs" "$rootfs.log"
}

ensure_base() {
  if [[ -n ${CARPOOL_BASE_IMAGE:-} ]]; then
    BASE_IMAGE=$CARPOOL_BASE_IMAGE
    return
  fi
  local tarball stamp
  tarball="$(base_tarball)"
  stamp="$(basename "$tarball" .tar)"
  BASE_IMAGE="localhost/carpool-base:bookworm-${stamp##*-}"
  if ! "${ENGINE_CMD[@]}" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "importing $tarball as $BASE_IMAGE"
    "${ENGINE_CMD[@]}" import --change 'CMD ["/bin/bash"]' \
      --message "debootstrap --variant=minbase bookworm ($stamp)" "$tarball" "$BASE_IMAGE" >/dev/null
  fi
}

build() {
  local target=$1 image=$2 started=$SECONDS
  local args=(build --file "$CONTAINERFILE" --target "$target" --tag "$image"
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --network host)
  if [[ $ENGINE == podman ]]; then
    # A wheelhouse and the host's CA bundle are mounted for the build only. (A wheelhouse, not
    # pip's HTTP cache: that one keeps only responses whose headers allow caching.)
    mkdir -p "$CACHE/wheels"
    args+=(--layers --ignorefile "$IGNOREFILE"
      --volume "$CACHE/wheels:$BUILD_MOUNTS/wheels"
      --build-arg "WHEELHOUSE=$BUILD_MOUNTS/wheels")
    if [[ -f $HOST_CA_BUNDLE ]]; then
      args+=(--volume "$HOST_CA_BUNDLE:$BUILD_MOUNTS/ca-certificates.crt:ro"
        --build-arg "PIP_CERT=$BUILD_MOUNTS/ca-certificates.crt")
    fi
  fi
  say "building $image (target $target, base $BASE_IMAGE)"
  "${ENGINE_CMD[@]}" "${args[@]}" "$ROOT" >&2
  say "built $image in $((SECONDS - started)) s"
}

size_of() {
  "${ENGINE_CMD[@]}" image inspect --format '{{.Size}}' "$1" |
    awk '{printf "%.0f MB", $1 / 1000000}'
}

started=$SECONDS
ensure_base
for target in "${TARGETS[@]}"; do
  if [[ $target == operator ]]; then
    build operator "$OPERATOR_IMAGE"
  else
    build worker "$WORKER_IMAGE"
  fi
done
if [[ $ENGINE == podman ]]; then
  # Images that a rebuild replaced (untagged, no image built on them); the layer cache stays.
  "${ENGINE_CMD[@]}" image prune --force --filter label=dev.carpool.build >/dev/null
fi
for target in "${TARGETS[@]}"; do
  image=$OPERATOR_IMAGE
  [[ $target == worker ]] && image=$WORKER_IMAGE
  say "$image: $(size_of "$image")"
  printf '%s=%s\n' "$target" "$image"
done
say "done in $((SECONDS - started)) s"
