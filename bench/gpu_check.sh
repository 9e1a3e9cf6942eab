#!/usr/bin/env bash
# The prepared GPU check: the `gpu` tests and the GPU benchmark, in under 8 minutes, results
# written to OUTDIR (device.txt, pytest.txt, gpu.json, gpu.md). Run from the checkout root:
#
#   bench/gpu_check.sh OUTDIR
#
# On a machine without a package index (the lent H200), dependencies the system Python lacks
# are installed from .gpu-wheelhouse/ if it was carried along (`make gpu-wheelhouse PYVER=3.12`
# fills it here). Each step has its own time limit so one slow step cannot eat the others.
set -u
OUT=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
T0=$(date +%s)
log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/steps.txt"; }

log "device"
{
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0))" 2>&1
  "$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -1
  "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1 | tail -1
} > "$OUT/device.txt"
cat "$OUT/device.txt"

log "dependencies"
VENV=$(mktemp -d)/venv
"$PY" -m venv --system-site-packages "$VENV" >> "$OUT/steps.txt" 2>&1 && PY="$VENV/bin/python"
if ! "$PY" -c "import msgspec, rich, tomlkit, tomli_w, transformers, safetensors, pytest" 2>/dev/null; then
  if [ -d .gpu-wheelhouse ]; then
    "$PY" -m pip install --quiet --no-index --find-links .gpu-wheelhouse msgspec rich tomlkit tomli-w transformers safetensors \
      huggingface_hub pytest >> "$OUT/steps.txt" 2>&1 || log "some wheels did not install (see steps.txt)"
  else
    log "missing Python packages and no .gpu-wheelhouse/: run 'make gpu-wheelhouse' where an index is reachable"
  fi
fi
"$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . >> "$OUT/steps.txt" 2>&1 || log "editable install failed (see steps.txt)"

log "gpu tests"
timeout 150 "$PY" -m pytest -q -m gpu tests/gpu tests/compile/test_tensorrt.py -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
log "gpu tests exit $? (tail below)"; tail -5 "$OUT/pytest.txt"

log "gpu bench"
timeout 270 "$PY" -m bench.gpu --models vits16,vitl16 --batch 1,8 --runs 60 --compile-limit-s 60 --json "$OUT/gpu.json" > "$OUT/gpu.md" 2>&1
log "gpu bench exit $?"; cat "$OUT/gpu.md" | grep -E "^\||device:|WARNING|could not" | head -40
log "done"
