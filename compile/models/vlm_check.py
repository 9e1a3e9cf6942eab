"""A VLM judge's whole-stage checks, for every family (compile/models/vlm_common.py; the
families' own references: `vision_reference`, `prefill_reference`, `transformers_judge`):

- `example_inputs`: real intermediate tensors for each graph's parity (a sample photo and a
  noise image of another aspect ratio; one prompt alone and, with max_batch > 1, two
  left-padded prompts of different lengths).
- `finish_stage`: the compiled chain (runtime/vlm_stage.py over the built engines) against
  transformers' full forward with its processor's pixel values (and, Qwen-VL, the model's own
  rotary index), on images at their own sizes: the manifest's end-to-end parity and the stage's
  measured latency; lossy precisions then face the accuracy gate: yes/no decisions against the
  FP32 graphs on the validation split (or, without labelled data, the sample images).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from pathlib import Path

import msgspec
import numpy as np
import torch

from streetcascade.config import CalibrationConfig, StageConfig, load_config, resolve_relative
from streetcascade.errors import ParityError
from streetcascade.manifest import GraphEntry, Parity, StageEntry, VlmEntry
from streetcascade.runtime.backends import get_backend
from streetcascade.runtime.vlm_host import preparation_for
from streetcascade.runtime.classifier import sigmoid
from streetcascade.runtime.vlm_stage import VlmJudge, prefill_feeds

from ..parity import folder_images
from .base import BuiltStage

log = logging.getLogger(__name__)

E2E_REFERENCE = "transformers-fp32 (processor + full forward)"
TIMED_RUNS = 3
GATE_IMAGES = 12  # without labelled data: the sample photos, then noise images of several shapes


def answers(logits: torch.Tensor, spec: VlmEntry) -> dict[str, np.ndarray]:
    logits = logits.double()
    yes = torch.tensor(spec.answer_yes)
    odds = torch.logsumexp(logits.masked_fill(~yes, float("-inf")), -1) - torch.logsumexp(logits.masked_fill(yes, float("-inf")), -1)
    return {"answer_logits": logits.float().numpy(), "yes_logodds": odds.float().numpy()}


def sample_images(config_path: Path, count: int, seed: int) -> list[np.ndarray]:
    """Up to `count` photos from the config's parity_images folder at their own size, then noise
    images of other aspect ratios."""
    config = load_config(config_path)
    folder = resolve_relative(config_path, config.parity_images) if config.parity_images else None
    images = list(itertools.islice(folder_images(folder), count))
    rng = np.random.default_rng(seed)
    shapes = [(150, 260), (300, 180), (224, 224), (97, 403)]
    while len(images) < count:
        h, w = shapes[len(images) % len(shapes)]
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return images


def example_inputs(family, stage: StageConfig, config_path: Path, model, spec: VlmEntry):
    """Parity inputs: the vision graph on a photo and on a noise image of another shape; the
    prefill on the first alone and (max_batch > 1) on both, left-padded."""
    prep = preparation_for(spec)
    photo = sample_images(config_path, 1, stage.seed)[0]
    noise = np.random.default_rng(stage.seed).integers(0, 256, (150, 260, 3), dtype=np.uint8)
    reference = family.vision_reference(model, spec)
    vision_feeds, encoded = [], []
    for rgb in (photo, noise):
        pixels, grid = prep.patches(rgb)
        feeds = prep.vision_feeds(pixels, grid)
        vision_feeds.append(feeds)
        encoded.append((reference(feeds), grid))
    pad = int(spec.prompt_ids[0])
    prefill = [prefill_feeds(spec, prep, encoded[:1], pad)]
    if stage.max_batch > 1:
        prefill.append(prefill_feeds(spec, prep, encoded, pad))
    return vision_feeds, prefill


def _engines(built: BuiltStage, fp32_reference: bool) -> dict:
    """The stage's engines as built, or (fp32_reference) its raw FP32 graphs through ONNX Runtime."""
    engines = {}
    for graph in built.entry.graphs:
        if fp32_reference:
            backend = get_backend("onnxruntime")
            options = msgspec.structs.replace(backend.options_for(built.config.runtime, "cpu"), optimize=True)
            engines[graph.role] = backend.load(str(built.raw(graph.role)), graph.io, options)
        else:
            engines[graph.role] = built.load(graph.role)
    return engines


def _close(engines: dict) -> None:
    for engine in engines.values():
        engine.close()


def finish_stage(family, built: BuiltStage, model, spec: VlmEntry, stage: StageConfig) -> StageEntry:
    from streetcascade.compile import parity as parity_gate

    progress = built.progress
    precision = next((g.precision for g in built.entry.graphs if g.precision != "fp32"), "fp32")
    tolerance = stage.parity_tolerance or parity_gate.DEFAULT_TOLERANCE.get(precision, 0.15)
    images = sample_images(built.config_path, 2, stage.seed + 1)
    progress.step(f"{stage.name}: the compiled judge end to end vs transformers (processor + full forward) on {len(images)} images at their own "
                  f"sizes (tolerance {tolerance:g} on p(yes))")
    engines = _engines(built, fp32_reference=False)
    try:
        judge = VlmJudge(engines, spec)
        ours = judge.run(images)
        times = []
        for _ in range(TIMED_RUNS):
            t0 = time.perf_counter()
            judge.run(images[:1])
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        _close(engines)
    theirs = family.transformers_judge(model, spec, images)
    p_ours, p_theirs = sigmoid(ours["yes_logodds"]), sigmoid(theirs["yes_logodds"])
    parity = Parity(reference=E2E_REFERENCE, n_images=len(images), max_abs_prob_error=float(np.abs(p_ours - p_theirs).max()),
                    max_abs_logit_error=float(np.abs(ours["answer_logits"] - theirs["answer_logits"]).max()), tolerance=tolerance,
                    decision_flips=float(np.mean(np.round(p_ours) != np.round(p_theirs))))
    log.info("%s end-to-end parity: max |dp| %.2e, max |dlogit| %.2e", stage.name, parity.max_abs_prob_error, parity.max_abs_logit_error)
    if parity.max_abs_prob_error > tolerance:
        raise ParityError(f"{stage.name}: the compiled judge's p(yes) differs from transformers' by {parity.max_abs_prob_error:.3g} "
                          f"(tolerance {tolerance:g}; answer logits by {parity.max_abs_logit_error:.3g})")
    spec = msgspec.structs.replace(spec, parity=parity, expected_ms=round(statistics.median(times), 3))
    entry = msgspec.structs.replace(built.entry, vlm=spec)
    if precision != "fp32":
        entry = _gate(built, entry, spec, stage)
    return entry


def _gate_images(built: BuiltStage, stage: StageConfig) -> tuple[list[np.ndarray], np.ndarray | None, str]:
    """The validation split's challenges and labels when [calibration] has data; else the sample
    photos and noise at several shapes, labelled by the FP32 answers."""
    cal = built.config.calibration
    if cal is not None and cal.has_data():
        from streetcascade.compile.static_int8 import load_split_images

        challenges, _ = load_split_images(built.config_path, built.config, "validation", cal.validation_samples, 32, built.progress)
        return list(challenges.images), np.asarray(challenges.labels), "validation"
    return sample_images(built.config_path, GATE_IMAGES, stage.seed + 2), None, "parity-images (no labelled data: FP32 answers as labels)"


def _quantized_nodes(built: BuiltStage, graphs: list[GraphEntry]) -> int:
    import onnx

    count = 0
    for graph in graphs:
        path = built.workdir / graph.file
        if path.suffix == ".onnx":
            model = onnx.load(str(path), load_external_data=False)
            count += sum(1 for n in model.graph.node if n.op_type in ("MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                                                                       "GatherBlockQuantized", "QLinearMatMul"))
    return count


def _gate(built: BuiltStage, entry: StageEntry, spec: VlmEntry, stage: StageConfig) -> StageEntry:
    from streetcascade.compile import accuracy_gate as gate_mod

    images, labels, split = _gate_images(built, stage)
    lossy = [g for g in entry.graphs if g.precision != "fp32"]
    built.progress.step(f"{stage.name}: accuracy gate: yes/no decisions of the {'/'.join(sorted({g.precision for g in lossy}))} judge vs its FP32 "
                        f"graphs on {len(images)} images ({split})")
    answers = {}
    for name, reference in (("fp32", True), ("quant", False)):
        engines = _engines(built, fp32_reference=reference)
        try:
            answers[name] = VlmJudge(engines, spec).log_odds(images)
        finally:
            _close(engines)
    if labels is None:
        labels = (sigmoid(answers["fp32"]) > 0.5).astype(np.int64)
    limits = built.config.calibration or CalibrationConfig()
    gate = gate_mod.compare(answers["fp32"], answers["quant"], labels, method="weights-only", n_calibration=0, limits=limits,
                            quantized_nodes=_quantized_nodes(built, lossy))
    gate = msgspec.structs.replace(gate, split=split)
    built.progress.step(gate_mod.summary(stage.name, gate))
    violations = gate_mod.check(gate)
    if violations:
        message = gate_mod.failure_message(stage.name, gate, violations, precision=lossy[0].precision)
        if split != "validation":
            message = message.replace(" validation challenges", f" images ({split})")
        raise gate_mod.AccuracyGateFailed(message, gate)
    return msgspec.structs.replace(entry, graphs=[msgspec.structs.replace(g, accuracy_gate=gate) if g.precision != "fp32" else g for g in entry.graphs])
