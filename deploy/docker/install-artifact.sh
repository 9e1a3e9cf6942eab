#!/bin/sh
# The Dockerfile's runtime step; tests/ship/test_deploy_scripts.py runs it.
#
#   deploy/docker/install-artifact.sh /build/miner.pex /opt/streetcascade
#
# Installs the one-file artifact as a plain virtualenv (pex's own `venv` tool, byte-compiled,
# files copied rather than linked into a cache): the container starts without unpacking anything
# and can run on a read-only root file system. DEST/pex is the artifact's command line
# (serve, doctor, info, health); `info` checks every packed hash in the installed copy.
set -eu
ARTIFACT=${1:?usage: install-artifact.sh ARTIFACT DEST}
DEST=${2:?usage: install-artifact.sh ARTIFACT DEST}
PYTHON=${PYTHON:-python3}

ROOT=$(mktemp -d)
PEX_TOOLS=1 PEX_ROOT="$ROOT" "$PYTHON" "$ARTIFACT" venv --compile --site-packages-copies "$DEST"
rm -rf "$ROOT"
"$DEST/pex" info
