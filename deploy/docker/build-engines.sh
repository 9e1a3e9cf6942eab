#!/bin/sh
# The Dockerfile's engine step; tests/ship/test_deploy_scripts.py runs it on the CPU.
#
#   CASCADE_CONFIG=configs/default.toml GPU_TYPE=cpu OUT=/build/engines deploy/docker/build-engines.sh
#
# GPU_TYPE: "cpu" (streetcascade compile), or the GPU type the image is for, by its SM ("sm89" for
# an RTX 4090 / L4, "sm86" for an RTX 3090 / A5000 / A10G, ...): streetcascade compile-engines
# builds for the GPU this build can see, and the step fails if that is not the one asked for,
# because an engine runs only on the SM (and TensorRT version) it was built with.
# TARGET: the --target of compile ("" = the config's [target]) or compile-engines ("auto").
set -eu
: "${CASCADE_CONFIG:?set CASCADE_CONFIG}" "${OUT:?set OUT}"
GPU_TYPE=${GPU_TYPE:-cpu}
SC=${STREETCASCADE:-streetcascade}
PYTHON=${PYTHON:-python3}

if [ "$GPU_TYPE" = cpu ]; then
    if [ -n "${TARGET:-}" ]; then
        "$SC" compile --config "$CASCADE_CONFIG" --out "$OUT" --target "$TARGET"
    else
        "$SC" compile --config "$CASCADE_CONFIG" --out "$OUT"
    fi
else
    "$SC" compile-engines --config "$CASCADE_CONFIG" --out "$OUT" --target "${TARGET:-auto}"
fi

# The engine set is for the device the image is for.
"$PYTHON" - "$OUT" "$GPU_TYPE" <<'PY'
import sys
from streetcascade.manifest import read_manifest

target = read_manifest(sys.argv[1]).target
wanted = sys.argv[2]
built = "cpu" if target.device == "cpu" else "sm" + (target.sm or "?").replace(".", "")
if built != wanted:
    sys.exit(f"build-engines: asked for {wanted}, built {built} ({target.name}, {target.gpu_name or target.arch}); "
             "an engine set runs only on the device type it was built on: build on that GPU type, or set GPU_TYPE")
print(f"build-engines: {target.name} ({target.backend} on {target.device}) in {sys.argv[1]}")
PY
"$SC" info --engines "$OUT"
