"""`precision = "int8-static"` for one stage: calibrate on the validator mix, quantize (QDQ),
optionally leave the most harmful layers FP32, then gate against the FP32 engine.

Data: the config's [calibration] table. The calibration split feeds the calibrator; the
validation split (never the test split) feeds the gate and the sensitivity pass. The engine
itself comes from `quantize.build_static`, the one static-INT8 builder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from streetcascade.calibration.source import DataSpec, load_challenges, open_samples
from streetcascade.config import CascadeConfig
from streetcascade.errors import ConfigError
from streetcascade.manifest import AccuracyGate
from streetcascade.progress import Progress
from streetcascade.runtime.classifier import sigmoid

from . import accuracy_gate as gate_mod
from . import quantize
from .targets.base import BuildJob
from .targets.onnxruntime import optimize_offline

log = logging.getLogger(__name__)


def recipe_for(config: CascadeConfig) -> quantize.StaticRecipe:
    cal = config.calibration
    return quantize.StaticRecipe(
        method=cal.method,
        percentile=cal.percentile,
        quantize_patch_embed=cal.quantize_patch_embed,
        quantize_head=cal.quantize_head,
    )


def load_split_images(config_path: Path, config: CascadeConfig, split: str, limit: int, size: int, progress: Progress):
    cal = config.calibration
    spec = DataSpec.from_config(cal, config_path)
    challenges = load_challenges(
        open_samples(spec), split, split_seed=cal.split_seed, fractions=cal.split_fractions,
        challenge_seed=cal.challenge_seed, limit=limit, progress=progress,
    )
    if len(challenges) == 0:
        raise ConfigError(f"{config_path}: [calibration] data has no images in the {split} split (seed {cal.split_seed}, fractions {list(cal.split_fractions)})")
    return challenges, challenges.batch(size)


def build_gated_static(job: BuildJob) -> AccuracyGate:
    stage, config, progress = job.stage, job.config, job.progress
    cal = config.calibration
    if cal is None or not cal.has_data():  # load_config already refuses this; belt and braces
        raise ConfigError(f"{stage.name}: int8-static needs a [calibration] table with data")
    runtime = config.runtime
    calib, calib_images = load_split_images(job.config_path, config, "calibration", cal.calibration_samples, stage.input_size, progress)
    val, val_images = load_split_images(job.config_path, config, "validation", cal.validation_samples, stage.input_size, progress)
    progress.step(f"{stage.name}: static INT8 (QDQ, {cal.method}) calibrated on {len(calib)} validator-mix challenges; gate on {len(val)}")

    ref_path = job.out.with_name(f"{stage.name}.fp32-ref.onnx")
    optimize_offline(job.raw, ref_path, job.io, runtime)
    fp32_logits = gate_mod.engine_logits(ref_path, job.io, val_images, runtime)
    n_sens = cal.sensitivity_samples or len(val_images)
    sens_images, sens_probs = val_images[:n_sens], sigmoid(fp32_logits[:n_sens])
    first: dict = {}  # the first quantization (before any layer is put back), for the report
    harm: list = []

    def sensitivity():
        result, qdq = first["result"], first["qdq"]
        everything = set(result.quantized)

        def only(name):
            return quantize.dequantize_nodes(qdq, job.raw, sorted(everything - {name}))

        return gate_mod.layer_sensitivity(result.quantized, only, sens_images, sens_probs, job.io, job.out.parent, runtime, progress)

    def keep_fp32(result, qdq) -> list[str]:
        first.update(result=result, qdq=qdq, kept=[])
        if cal.sensitivity_keep_fp32 > 0:
            harm.extend(sensitivity())
            first["kept"] = [h.name for h in harm[: cal.sensitivity_keep_fp32]]
            progress.step(f"{stage.name}: leaving {len(first['kept'])} most harmful layer(s) in FP32: {', '.join(first['kept'])}")
        return first["kept"]

    built = quantize.build_static(job.raw, job.out, calib_images, recipe_for(config), job.io, runtime, keep_fp32=keep_fp32)
    quant_logits = gate_mod.engine_logits(job.out, job.io, val_images, runtime)
    gate = gate_mod.compare(
        fp32_logits, quant_logits, val.labels, method=cal.method, n_calibration=len(calib), limits=cal,
        quantized_nodes=len(built.quantized), kept_fp32=first["kept"],
    )
    if harm:
        gate = gate_mod.with_harm(gate, harm[:10])
    progress.step(gate_mod.summary(stage.name, gate))
    violations = gate_mod.check(gate)
    if violations:
        if not harm:
            harm = sensitivity()
            gate = gate_mod.with_harm(gate, harm[:10])
        job.out.unlink(missing_ok=True)
        raise gate_mod.AccuracyGateFailed(gate_mod.failure_message(stage.name, gate, violations), gate)
    return gate
