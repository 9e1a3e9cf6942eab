"""The accuracy gate for quantized engines, and the per-layer sensitivity pass behind it.
(calibration/ supplies the data and the metrics; the gate belongs to compile, which it refuses.)

`compare` runs the FP32 engine and the quantized engine (both through the runtime's backend)
on the validation challenges (validator mix) and measures what changes: decision flips, the
accuracy / MCC / AUC of each against the labels, and the probability error. It takes one
decision logit per sample from each engine: a classifier's logit (`engine_logits`), or for
graphs that are not image classifiers whatever `engine_outputs` returns reduced to one logit
(a VLM judge's log p(yes) - log p(no): softmax over the two answers = sigmoid of it), so an
int4 (or INT8) judge is gated against its FP32 engine the same way. `check` holds those
figures against the configured limits. `layer_sensitivity` quantizes one layer at a time (all
others FP32, same calibration scales) and ranks the layers by the flips and probability error
they cause alone: the report's "layers that hurt", and what `sensitivity_keep_fp32` leaves FP32.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import numpy as np

from streetcascade.calibration import metrics
from streetcascade.errors import CompileError
from streetcascade.manifest import AccuracyGate, GraphIO, LayerHarm
from streetcascade.progress import QUIET, Progress
from streetcascade.runtime.backends import get_backend
from streetcascade.runtime.classifier import sigmoid
from streetcascade.settings import RuntimeConfig

log = logging.getLogger(__name__)


class AccuracyGateFailed(CompileError):
    """A quantized engine loses more accuracy than the configured limits allow; not written."""

    def __init__(self, message: str, gate: AccuracyGate):
        super().__init__(message)
        self.gate = gate


def engine_logits(path: Path, io: GraphIO, images: np.ndarray, runtime: RuntimeConfig = RuntimeConfig(), optimize: bool = False,
                  backend_name: str = "onnxruntime") -> np.ndarray:
    """Logits of the CPU engine at `path` over `images`, through the runtime's backend.
    `optimize` (ONNX Runtime): run its optimiser at load (graphs not optimised offline)."""
    backend = get_backend(backend_name)
    options = backend.options_for(runtime, "cpu")
    if optimize:
        options = msgspec.structs.replace(options, optimize=True)
    with backend.load(str(path), io, options) as engine, engine.slot() as slot:
        return slot.logits(images)


def engine_outputs(path: Path, io: GraphIO, feeds: Sequence[dict[str, np.ndarray]], output: str, runtime: RuntimeConfig = RuntimeConfig(),
                   backend_name: str = "onnxruntime", optimize: bool = False) -> np.ndarray:
    """One named output of the engine at `path` for each feed dict (any graph: prompts for a
    language model, images and token ids for a VLM), rows concatenated, through the runtime's
    backend. `optimize` (ONNX Runtime): run its optimiser at load (graphs not optimised offline)."""
    backend = get_backend(backend_name)
    options = backend.options_for(runtime, "cpu")
    if optimize:
        options = msgspec.structs.replace(options, optimize=True)
    if output not in {o.name for o in io.outputs}:
        raise CompileError(f"{path}: no output {output!r} (has {', '.join(o.name for o in io.outputs)})")
    with backend.load(str(path), io, options) as engine, engine.slot() as slot:
        return np.concatenate([slot.infer(f)[output] for f in feeds], axis=0)


def engine_logits_each_batch(path: Path, io: GraphIO, images: np.ndarray, runtime: RuntimeConfig = RuntimeConfig(),
                             backend_name: str = "onnxruntime", device: str = "cpu") -> list[np.ndarray]:
    """Logits over `images` run one at a time, and (max_batch > 1) in batches of max_batch: an
    engine may run batch 1 through other kernels (the OpenVINO backend's fixed-shape copy; a
    GPU engine's CUDA graph per batch size)."""
    backend = get_backend(backend_name)
    with backend.load(str(path), io, backend.options_for(runtime, device)) as engine, engine.slot() as slot:
        return [slot.logits(images, batch) for batch in sorted({1, io.max_batch})]


def _auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    value = metrics.auc(labels, probs)
    return None if math.isnan(value) else float(value)


def compare(
    fp32_logits: np.ndarray,
    quant_logits: np.ndarray,
    labels: np.ndarray,
    *,
    method: str,
    n_calibration: int,
    limits,
    quantized_nodes: int,
    kept_fp32: Sequence[str] = (),
    reference: str = "onnxruntime-fp32",
) -> AccuracyGate:
    """Gate figures for one quantized (or bf16, or int4) engine against the FP32 engine
    `reference`: one decision logit per sample from each (probability = sigmoid); `limits` is a
    CalibrationConfig (max_* fields). `method` names how the engine was made ("minmax",
    "int4-rtn-b128", "int4-awq", ...); `n_calibration` 0 for data-free methods."""
    if not np.all(np.isfinite(quant_logits)):
        raise CompileError("the quantized (or bf16) engine produced non-finite logits on the validation split")
    p32, pq = sigmoid(fp32_logits), sigmoid(quant_logits)
    y = np.asarray(labels, dtype=np.int64)
    dp = np.abs(pq - p32)
    acc32, accq = metrics.accuracy(y, p32), metrics.accuracy(y, pq)
    mcc32, mccq = metrics.mcc(y, p32), metrics.mcc(y, pq)
    auc32, aucq = _auc(y, p32), _auc(y, pq)
    gate = AccuracyGate(
        reference=reference,
        split="validation",
        n_images=int(y.size),
        n_calibration=int(n_calibration),
        method=method,
        quantized_nodes=int(quantized_nodes),
        kept_fp32=list(kept_fp32),
        flip_rate=float(np.mean(np.round(pq) != np.round(p32))),
        max_abs_prob_error=float(dp.max()),
        mean_abs_prob_error=float(dp.mean()),
        accuracy_fp32=acc32,
        accuracy_quant=accq,
        mcc_fp32=mcc32,
        mcc_quant=mccq,
        auc_fp32=auc32,
        auc_quant=aucq,
        max_flip_rate=limits.max_flip_rate,
        max_mcc_drop=limits.max_mcc_drop,
        max_accuracy_drop=limits.max_accuracy_drop,
        max_auc_drop=limits.max_auc_drop,
        max_prob_error=limits.max_prob_error,
        passed=True,
    )
    violations = check(gate)
    return _with(gate, passed=not violations)


def _with(gate: AccuracyGate, **changes) -> AccuracyGate:
    return msgspec.structs.replace(gate, **changes)


def check(gate: AccuracyGate) -> list[str]:
    """Human-readable limit violations (empty when the engine passes)."""
    out = []
    if gate.flip_rate > gate.max_flip_rate:
        out.append(f"decision flips {gate.flip_rate:.2%} > {gate.max_flip_rate:.2%}")
    if gate.mcc_fp32 - gate.mcc_quant > gate.max_mcc_drop:
        out.append(f"MCC drop {gate.mcc_fp32 - gate.mcc_quant:.4f} > {gate.max_mcc_drop:g}")
    if gate.accuracy_fp32 - gate.accuracy_quant > gate.max_accuracy_drop:
        out.append(f"accuracy drop {gate.accuracy_fp32 - gate.accuracy_quant:.4f} > {gate.max_accuracy_drop:g}")
    if gate.auc_fp32 is not None and gate.auc_quant is not None and gate.auc_fp32 - gate.auc_quant > gate.max_auc_drop:
        out.append(f"AUC drop {gate.auc_fp32 - gate.auc_quant:.4f} > {gate.max_auc_drop:g}")
    if gate.max_abs_prob_error > gate.max_prob_error:
        out.append(f"max probability error {gate.max_abs_prob_error:.3g} > {gate.max_prob_error:g}")
    return out


def summary(stage: str, gate: AccuracyGate) -> str:
    """One progress line: the gate's figures against its limit on flips."""
    return (f"{stage}: gate vs FP32: flips {gate.flip_rate:.2%} (limit {gate.max_flip_rate:.2%}), MCC {gate.mcc_fp32:.4f} -> {gate.mcc_quant:.4f}, "
            f"accuracy {gate.accuracy_fp32:.4f} -> {gate.accuracy_quant:.4f}, max |dp| {gate.max_abs_prob_error:.3g}")


def with_harm(gate: AccuracyGate, harm: Sequence[LayerHarm]) -> AccuracyGate:
    return _with(gate, harmful_layers=list(harm))


def failure_message(stage: str, gate: AccuracyGate, violations: Sequence[str], top: int = 5, precision: str = "int8-static") -> str:
    lines = [
        f"{stage}: {precision} engine refused by the accuracy gate ({'; '.join(violations)}) on {gate.n_images} validation "
        f"challenges vs the FP32 engine ({gate.method}{f' calibration on {gate.n_calibration}' if gate.n_calibration else ''}); not written."
    ]
    if gate.harmful_layers:
        worst = ", ".join(f"{h.name} (flips {h.flip_rate:.1%}, mean |dp| {h.mean_abs_prob_error:.2e})" for h in gate.harmful_layers[:top])
        lines.append(f"Layers that hurt most when quantized alone: {worst}.")
        lines.append("Set [calibration] sensitivity_keep_fp32 = N to leave the N worst in FP32, try method = \"percentile\"/\"entropy\", or use int8-dynamic.")
    return " ".join(lines)


def enforce_worst(stage: str, gates: Sequence[AccuracyGate], precision: str, remove: Sequence[Path], progress: Progress) -> AccuracyGate:
    """One engine gated on each of its batch paths (engine_logits_each_batch): the worst gate is
    the engine's. Printed; when it breaks a limit, the engine's files are removed and
    AccuracyGateFailed raised."""
    gate = max(gates, key=lambda g: (len(check(g)), g.flip_rate, g.max_abs_prob_error))
    progress.step(summary(stage, gate))
    violations = check(gate)
    if violations:
        for path in remove:
            path.unlink(missing_ok=True)
        raise AccuracyGateFailed(failure_message(stage, gate, violations, precision=precision), gate)
    return gate


def layer_sensitivity(
    nodes: Sequence[str],
    build_only: Callable[[str], object],
    images: np.ndarray,
    fp32_probs: np.ndarray,
    io: GraphIO,
    workdir: Path,
    runtime: RuntimeConfig = RuntimeConfig(),
    progress: Progress = QUIET,
) -> list[LayerHarm]:
    """Quantize one node at a time (`build_only(name)` -> ModelProto with only that node's Q/DQ)
    and rank nodes by the flips, then the mean probability error, they cause on `images`."""
    import onnx

    harm = []
    path = workdir / "sensitivity.onnx"
    try:
        for name in progress.track(nodes, f"sensitivity: each of {len(nodes)} quantized layers alone on {len(images)} images"):
            onnx.save(build_only(name), str(path))
            p = sigmoid(engine_logits(path, io, images, runtime, optimize=True))
            dp = np.abs(p - fp32_probs)
            harm.append(LayerHarm(name=name, flip_rate=float(np.mean(np.round(p) != np.round(fp32_probs))),
                                  mean_abs_prob_error=float(dp.mean()), max_abs_prob_error=float(dp.max())))
    finally:
        path.unlink(missing_ok=True)
    harm.sort(key=lambda h: (-h.flip_rate, -h.mean_abs_prob_error))
    return harm
