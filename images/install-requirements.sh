#!/bin/sh
# Used inside images/Containerfile: install a requirements file into the active environment.
# With WHEELHOUSE set (images/build.sh mounts ~/.cache/carpool/images/wheels there for the
# build), download what is missing into it and install from it alone; pip's HTTP cache cannot
# stand in, as it keeps only the responses whose headers allow caching. Without it, plain pip.
set -eu
if [ -n "${WHEELHOUSE:-}" ]; then
  pip download --quiet --dest "$WHEELHOUSE" -r "$1"
  pip install --no-index --find-links "$WHEELHOUSE" -r "$1"
else
  pip install -r "$1"
fi
