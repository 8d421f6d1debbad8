#!/usr/bin/env bash
# podman with carpool's containers.conf: `images/podman.sh ARGS...` runs `podman ARGS...`.
#
# The settings are the ones podman needs on the CI machines (Debian 12, rootful, cgroup v1 or a
# hybrid hierarchy), written to ~/.cache/carpool/images/containers.conf and used through
# CONTAINERS_CONF unless CONTAINERS_CONF is set already:
#   - runtime runc: crun refuses hybrid cgroup hierarchies;
#   - the containers' open-files limit at this shell's hard limit (`ulimit -Hn`) and their
#     process limit at 32768, set explicitly rather than inherited;
#   - cgroupfs and a file events log when systemd is not PID 1 (no systemd, no journald).
set -euo pipefail

CACHE="${CARPOOL_CACHE_DIR:-$HOME/.cache/carpool}/images"

if [[ -z ${CONTAINERS_CONF:-} ]]; then
  command -v podman >/dev/null || {
    echo "podman is not installed: run 'make image-tools' (apt-get install podman runc debootstrap)" >&2
    exit 127
  }
  nofile="$(ulimit -Hn)"
  [[ $nofile == unlimited ]] && nofile=1048576
  conf="[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=32768:32768\"]

[engine]
runtime = \"runc\""
  if [[ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]]; then
    conf+="
cgroup_manager = \"cgroupfs\"
events_logger = \"file\""
  fi
  mkdir -p "$CACHE"
  export CONTAINERS_CONF="$CACHE/containers.conf"
  if [[ ! -f $CONTAINERS_CONF || "$(cat "$CONTAINERS_CONF")" != "$conf" ]]; then
    printf '%s\n' "$conf" >"$CONTAINERS_CONF.$$"
    mv "$CONTAINERS_CONF.$$" "$CONTAINERS_CONF"
  fi
fi

exec podman "$@"
