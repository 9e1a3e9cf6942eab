#!/bin/sh
# The Dockerfile's packaging step; tests/ship/test_deploy_scripts.py runs it.
#
#   ENGINES=/build/engines MINER_CONFIG=deploy/docker/miner.toml OUT=/build/miner.pex deploy/docker/package.sh
#
# The one-file artifact (streetcascade package): the online side, the engine set and the miner
# config. By default from the distributions installed in this build's virtualenv (offline);
# PACKAGE_ARGS (else DEFAULT_PACKAGE_ARGS, which the GPU toolchain stage sets) adds or overrides
# flags, e.g. "--resolve index --index-url ..." for TensorRT's wheels.
# Then the artifact is started once (`info`: every packed hash checked) in a throw-away PEX_ROOT.
set -eu
: "${ENGINES:?set ENGINES}" "${MINER_CONFIG:?set MINER_CONFIG}" "${OUT:?set OUT}"
SC=${STREETCASCADE:-streetcascade}
PYTHON=${PYTHON:-python3}

# shellcheck disable=SC2086  # PACKAGE_ARGS is a list of flags
"$SC" package --engines "$ENGINES" --config "$MINER_CONFIG" -o "$OUT" ${PACKAGE_ARGS:-${DEFAULT_PACKAGE_ARGS:-}}
ROOT=$(mktemp -d)
PEX_ROOT="$ROOT" "$PYTHON" "$OUT" info
rm -rf "$ROOT"
