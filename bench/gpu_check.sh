#!/usr/bin/env bash
# The prepared GPU check: the `gpu` tests and the GPU benchmark, in under 8 minutes, results
# written to OUTDIR: steps.txt (every step, the device facts, the dependency line), pytest.txt
# (both test steps, -v: a crash names its test), gpu-<model>.json/.log, gpu.md. Seven files: the
# device tool brings back at most eight (a run that wrote twelve lost its test log).
# Run from anywhere, on the GPU machine as it is:
#
#   bench/gpu_check.sh OUTDIR                 # on the GPU machine
#   bench/gpu_check.sh OUTDIR --cpu-dry-run   # here: the same dependency and import steps, GPU parts skipped
#
# That machine's python3 is a virtualenv with PyTorch + CUDA and no package index. So: no new
# virtualenv (it would lose torch) and no editable install; bench/checkout_env.py installs what
# that Python lacks from .gpu-wheelhouse/ (carried along; `make gpu-wheelhouse` fills it) into
# a folder put first on PYTHONPATH, and the checkout is imported as it is (PYTHONPATH=DIR:ROOT;
# streetcascade/__init__.py finds its subpackages in the checkout's top-level folders).
# Every step has its own time limit, and the limits add up to the deadline (470 s by default,
# GPU_CHECK_SECONDS): a slow step cannot eat the others, and whatever finished is on disk.
set -u
OUT=${1:?usage: bench/gpu_check.sh OUTDIR [--cpu-dry-run]}
MODE=${2:-}
case "$MODE" in ""|--cpu-dry-run) ;; *) echo "unknown option $MODE (use --cpu-dry-run)" >&2; exit 2 ;; esac
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
DEADLINE=${GPU_CHECK_SECONDS:-470}
WHEELHOUSE=${GPU_WHEELHOUSE:-$ROOT/.gpu-wheelhouse}
DEPS=${GPU_CHECK_DEPS:-$(mktemp -d)/deps}  # not under OUTDIR: OUTDIR is what comes back
T0=$(date +%s)
: > "$OUT/steps.txt"
log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/steps.txt"; }
# limit CAP: the step's own cap, or what is left before the deadline if that is less.
limit() { local left=$(( DEADLINE - ($(date +%s) - T0) )); local cap=$1; [ "$left" -lt "$cap" ] && cap=$left; [ "$cap" -lt 1 ] && cap=1; echo "$cap"; }

log "device"
{
  if [ "$MODE" = --cpu-dry-run ]; then
    echo "cpu dry run: no GPU is used; nvidia-smi not called"
  else
    timeout 10 nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1
  fi
  timeout "$(limit 20)" "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')" 2>&1 | tail -1
  timeout 20 "$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -1
  timeout 20 "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1 | tail -1
} | tee -a "$OUT/steps.txt"

log "dependencies"
DEPS_LOG=$(mktemp)
timeout "$(limit 60)" "$PY" bench/checkout_env.py "$DEPS" --wheelhouse "$WHEELHOUSE" > "$DEPS_LOG" 2>&1
DEPS_RC=$?
tail -1 "$DEPS_LOG" | tee -a "$OUT/steps.txt"
export PYTHONPATH="$DEPS:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DEPS_RC" -ne 0 ]; then
  log "stopped: a dependency the check needs is missing (see the line above; make gpu-wheelhouse where an index is reachable)"
  exit 3
fi

log "gpu tests"
timeout "$(limit 150)" "$PY" -m pytest -v -m gpu tests/gpu -p no:cacheprovider -rs > "$OUT/pytest.txt" 2>&1
RC=$?
log "gpu tests exit $RC$([ $RC -eq 124 ] && echo ' (time limit)')$([ $RC -eq 139 ] && echo ' (segmentation fault)')"
grep -E "PASSED|FAILED|ERROR|SKIPPED|Fatal Python error|^=+ .* =+$" "$OUT/pytest.txt" | tail -20 | tee -a "$OUT/steps.txt"

# The latency suite's GPU half (the rest of `pytest -m gpu`): its own step, so a slow compile
# there cannot cut the tests above.
log "gpu latency tests"
timeout "$(limit 60)" "$PY" -m pytest -v -m gpu tests/latency/test_gpu_latency.py -p no:cacheprovider -rs >> "$OUT/pytest.txt" 2>&1
RC=$?
log "gpu latency tests exit $RC$([ $RC -eq 124 ] && echo ' (time limit)')$([ $RC -eq 139 ] && echo ' (segmentation fault)')"
grep -E "PASSED|FAILED|ERROR|SKIPPED|Fatal Python error|^=+ .* =+$" "$OUT/pytest.txt" | tail -4 | tee -a "$OUT/steps.txt"

if [ "$MODE" = --cpu-dry-run ]; then
  log "gpu bench: cpu dry run, the plan only (no GPU here)"
  timeout "$(limit 60)" "$PY" -m bench.gpu --dry-run --models vits16,vitl16 --batch 1,8 > "$OUT/gpu.md" 2>&1
  log "gpu bench plan exit $?"; cat "$OUT/gpu.md"
  log "done (cpu dry run)"
  exit 0
fi

: > "$OUT/gpu.md"
# One process per model: a crash or a time limit in one leaves the other's table. ViT-S gets
# 110 s, ViT-L what is left; each model's build budget stays 30-45 s under its limit so the
# measuring after the builds (interleaved rounds, GPU-only events) fits too.
bench() {  # MODEL LIMIT BUILD_BUDGET
  log "gpu bench $1 (limit $2 s, builds $3 s)"
  timeout "$2" "$PY" -m bench.gpu --models "$1" --batch 1,8 --runs 100 --budget-s "$1=$3" \
    --json "$OUT/gpu-$1.json" > "$OUT/gpu-$1.log" 2>&1
  local rc=$?
  log "gpu bench $1 exit $rc$([ $rc -eq 124 ] && echo ' (time limit)')"
  grep -E "^\||^device:|^bf16|^bar:|WARNING|could not|skipped|not measured" "$OUT/gpu-$1.log" | tee -a "$OUT/gpu.md" | head -30
}
L=$(limit 110); bench vits16 "$L" $(( L > 60 ? L - 30 : L / 2 ))
L=$(limit 400); bench vitl16 "$L" $(( L > 90 ? L - 45 : L / 2 ))
log "done"
