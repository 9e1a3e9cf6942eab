"""`precision = "int8-static"` for one stage: calibrate on the validator mix, quantize (QDQ),
optionally leave the most harmful layers FP32, then gate against the FP32 engine.

Data: the config's [calibration] table. The calibration split feeds the calibrator; the
validation split (never the test split) feeds the gate and the sensitivity pass.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from streetcascade.calibration import gate as gate_mod
from streetcascade.calibration.source import DataSpec, load_challenges, open_samples
from streetcascade.config import CascadeConfig, StageConfig
from streetcascade.errors import ConfigError
from streetcascade.manifest import AccuracyGate
from streetcascade.runtime.backends import get_backend
from streetcascade.runtime.cascade import sigmoid

from . import quantize
from .targets import onnxruntime as ort_target

log = logging.getLogger(__name__)


def recipe_for(config: CascadeConfig) -> quantize.StaticRecipe:
    cal = config.calibration
    return quantize.StaticRecipe(
        method=cal.method,
        percentile=cal.percentile,
        quantize_patch_embed=cal.quantize_patch_embed,
        quantize_head=cal.quantize_head,
    )


def load_split_images(config_path: Path, config: CascadeConfig, split: str, limit: int, size: int):
    cal = config.calibration
    spec = DataSpec.from_config(cal, config_path)
    challenges = load_challenges(
        open_samples(spec), split, split_seed=cal.split_seed, fractions=cal.split_fractions,
        challenge_seed=cal.challenge_seed, limit=limit,
    )
    if len(challenges) == 0:
        raise ConfigError(f"{config_path}: [calibration] data has no images in the {split} split (seed {cal.split_seed}, fractions {list(cal.split_fractions)})")
    return challenges, challenges.batch(size)


def build_gated_static(
    stage: StageConfig,
    config_path: Path,
    config: CascadeConfig,
    raw: Path,
    out_path: Path,
    inputs,
    outputs,
    step: Callable[[str], None],
) -> AccuracyGate:
    cal = config.calibration
    if cal is None or not cal.has_data():  # load_config already refuses this; belt and braces
        raise ConfigError(f"{stage.name}: int8-static needs a [calibration] table with data")
    threads = config.target.intra_op_threads
    calib, calib_images = load_split_images(config_path, config, "calibration", cal.calibration_samples, stage.input_size)
    val, val_images = load_split_images(config_path, config, "validation", cal.validation_samples, stage.input_size)
    step(f"{stage.name}: static INT8 (QDQ, {cal.method}) calibrated on {len(calib)} validator-mix challenges; gate on {len(val)}")

    backend = get_backend(ort_target.BACKEND)
    ref_path = out_path.with_name(f"{stage.name}.fp32-ref.onnx")
    ort_target.optimize_offline(raw, ref_path, threads)
    ref = backend.load(str(ref_path), inputs, outputs, {"intra_op_threads": threads})
    try:
        fp32_logits = gate_mod.run_logits(ref, val_images, stage.max_batch)
    finally:
        ref.close()

    recipe = recipe_for(config)
    qdq_path = out_path.with_name(out_path.name.replace(".onnx", "") + ".qdq.onnx")
    first = quantize.quantize_static_qdq(raw, qdq_path, calib_images, recipe)
    n_sens = cal.sensitivity_samples or len(val_images)
    sens_images, sens_probs = val_images[:n_sens], sigmoid(fp32_logits[:n_sens])
    harm = []

    def sensitivity():
        step(f"{stage.name}: per-layer sensitivity over {len(first.quantized)} quantized layers on {len(sens_images)} images")
        everything_else = set(first.quantized)

        def only(name):
            return quantize.dequantize_nodes(qdq_path, raw, sorted(everything_else - {name}))

        return gate_mod.layer_sensitivity(first.quantized, only, sens_images, sens_probs, stage.max_batch, threads, step)

    kept: list[str] = []
    if cal.sensitivity_keep_fp32 > 0:
        harm = sensitivity()
        kept = [h.name for h in harm[: cal.sensitivity_keep_fp32]]
        step(f"{stage.name}: leaving {len(kept)} most harmful layer(s) in FP32: {', '.join(kept)}")
    src = qdq_path
    if kept:
        src = qdq_path.with_name(qdq_path.stem + ".kept.onnx")
        quantize.dequantize_nodes(qdq_path, raw, kept, src)
    ort_target.optimize_offline(src, out_path, threads)
    if recipe.fuse_bias:
        quantize.fuse_matmul_integer_bias(out_path)

    engine = backend.load(str(out_path), inputs, outputs, {"intra_op_threads": threads})
    try:
        quant_logits = gate_mod.run_logits(engine, val_images, stage.max_batch)
    finally:
        engine.close()
    gate = gate_mod.compare(
        fp32_logits, quant_logits, val.labels, method=cal.method, n_calibration=len(calib), limits=cal,
        quantized_nodes=len(first.quantized) - len(kept), kept_fp32=kept,
    )
    if harm:
        gate = gate_mod.with_harm(gate, harm[:10])
    step(
        f"{stage.name}: gate vs FP32: flips {gate.flip_rate:.2%} (limit {cal.max_flip_rate:.2%}), MCC {gate.mcc_fp32:.4f} -> {gate.mcc_quant:.4f}, "
        f"accuracy {gate.accuracy_fp32:.4f} -> {gate.accuracy_quant:.4f}, max |dp| {gate.max_abs_prob_error:.3g}"
    )
    violations = gate_mod.check(gate)
    if violations:
        if not harm:
            harm = sensitivity()
            gate = gate_mod.with_harm(gate, harm[:10])
        out_path.unlink(missing_ok=True)
        raise gate_mod.AccuracyGateFailed(gate_mod.failure_message(stage.name, gate, violations), gate)
    return gate
