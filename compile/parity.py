"""The parity gate: the built engine (loaded through the runtime's own backend) against the
family's PyTorch reference, on real-looking and random images. Over tolerance -> ParityError."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from streetcascade.errors import ParityError
from streetcascade.manifest import Parity
from streetcascade.runtime.backends import Engine
from streetcascade.runtime.classifier import sigmoid
from streetcascade.runtime.images import IMAGE_SUFFIXES, decode_image, resize_to

log = logging.getLogger(__name__)

# Default tolerance on probabilities, per precision (fp32 must match; int8 is an approximation).
# int4 (weights only, float activations): a sanity bound like int8's; a VLM judge's accuracy gate decides.
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 2e-2, "fp8": 0.15, "int8-dynamic": 0.15, "int8-static": 0.15, "int4": 0.15}
REFERENCE_BATCH = 16


def folder_images(folder: Path | None):
    """The images of `folder` (decoded, at their own size) in file-name order, read one at a
    time; nothing when there is no such folder."""
    if folder is None or not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            yield decode_image(path.read_bytes())


def parity_images(size: int, folder: Path | None, n_random: int = 8, seed: int = 0) -> tuple[np.ndarray, int]:
    """Sample images from `folder` (resized) + seeded noise and flat images. Returns (images, n_real)."""
    real = [resize_to(image, size) for image in folder_images(folder)]
    rng = np.random.default_rng(seed)
    synthetic = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n_random)]
    synthetic += [np.full((size, size, 3), v, dtype=np.uint8) for v in (0, 255)]
    return np.stack(real + synthetic), len(real)


def check_classifier_parity(engine: Engine, reference, images: np.ndarray, tolerance: float, label: str,
                            reference_name: str = "pytorch-fp32-eager") -> Parity:
    """Logits of the engine (batched at its max_batch, and image 0 alone) vs the reference."""
    with engine.slot() as slot:
        got = slot.logits(images)
        # Batch 1 too: the dynamic batch axis must give the same answers. (Not bit-identical
        # under dynamic INT8: activation scales are computed per tensor, i.e. over the batch.)
        single = slot.logits(images[:1])
    if not np.all(np.isfinite(got)):
        raise ParityError(f"{label}: the engine produced non-finite logits")
    drift = float(np.abs(sigmoid(single) - sigmoid(got[:1])).max())
    if drift > tolerance:
        raise ParityError(f"{label}: batch-1 probability differs from the batched one by {drift:.3g} (tolerance {tolerance:g})")
    want = np.concatenate([np.asarray(reference(images[i : i + REFERENCE_BATCH]), dtype=np.float64).reshape(-1) for i in range(0, len(images), REFERENCE_BATCH)])
    p_got, p_want = sigmoid(got), sigmoid(want)
    parity = Parity(
        reference=reference_name,
        n_images=len(images),
        max_abs_prob_error=float(np.abs(p_got - p_want).max()),
        max_abs_logit_error=float(np.abs(got - want).max()),
        tolerance=tolerance,
        decision_flips=float(np.mean(np.round(p_got) != np.round(p_want))),
    )
    log.info("%s parity: max |dp| %.2e, max |dlogit| %.2e over %d images", label, parity.max_abs_prob_error, parity.max_abs_logit_error, len(images))
    if parity.max_abs_prob_error > tolerance:
        raise ParityError(
            f"{label}: max probability error {parity.max_abs_prob_error:.3g} vs {reference_name} exceeds the tolerance {tolerance:g} "
            f"(max logit error {parity.max_abs_logit_error:.3g}, {parity.decision_flips:.1%} decisions flipped)"
        )
    return parity


def check_tensor_parity(engine: Engine, reference, feeds_list: list[dict[str, np.ndarray]], tolerance: float, label: str) -> Parity:
    """Every output of the engine vs the reference graph's, on the family's example inputs."""
    worst = 0.0
    for got, want in _compared(engine, reference, feeds_list, label):
        for name, value in got.items():
            worst = max(worst, float(np.abs(value.astype(np.float64) - want[name]).max()))
    parity = Parity(reference="onnx-source-onnxruntime", n_images=len(feeds_list), max_abs_prob_error=worst,
                    max_abs_logit_error=worst, tolerance=tolerance)
    log.info("%s tensor parity: max |d| %.2e over %d inputs", label, worst, len(feeds_list))
    if worst > tolerance:
        raise ParityError(f"{label}: max output difference {worst:.3g} vs the source graph exceeds the tolerance {tolerance:g}")
    return parity


def check_relative_parity(engine: Engine, reference, feeds_list: list[dict[str, np.ndarray]], tolerance: float, label: str) -> Parity:
    """Every output of the engine vs the reference, the error relative to the largest reference
    value of that output (features of any scale: a VLM's vision tower)."""
    worst_abs, worst_rel = 0.0, 0.0
    for got, want in _compared(engine, reference, feeds_list, label):
        for name, value in got.items():
            diff = float(np.abs(value.astype(np.float64) - want[name]).max()) if value.size else 0.0
            scale = max(float(np.abs(want[name]).max()) if value.size else 0.0, 1.0)
            worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / scale)
    parity = Parity(reference=RELATIVE_REFERENCE, n_images=len(feeds_list), max_abs_prob_error=worst_rel, max_abs_logit_error=worst_abs, tolerance=tolerance)
    log.info("%s relative parity: max |d|/max|ref| %.2e (max |d| %.2e) over %d inputs", label, worst_rel, worst_abs, len(feeds_list))
    if worst_rel > tolerance:
        raise ParityError(f"{label}: output difference {worst_rel:.3g} of the reference's scale (max |d| {worst_abs:.3g}) exceeds the tolerance {tolerance:g}")
    return parity


def check_judge_parity(engine: Engine, reference, feeds_list: list[dict[str, np.ndarray]], tolerance: float, label: str) -> Parity:
    """A yes/no judge's graph vs the reference: p(yes) = sigmoid(yes_logodds) within the
    tolerance; the largest difference of any output (the answer logits) recorded."""
    worst_logit, worst_p, flips, n = 0.0, 0.0, 0, 0
    for got, want in _compared(engine, reference, feeds_list, label):
        for name, value in got.items():
            worst_logit = max(worst_logit, float(np.abs(value.astype(np.float64) - want[name]).max()))
        p_got, p_want = sigmoid(got["yes_logodds"]), sigmoid(want["yes_logodds"])
        worst_p = max(worst_p, float(np.abs(p_got - p_want).max()))
        flips += int(np.sum(np.round(p_got) != np.round(p_want)))
        n += p_got.size
    parity = Parity(reference="transformers-fp32-eager", n_images=n, max_abs_prob_error=worst_p, max_abs_logit_error=worst_logit,
                    tolerance=tolerance, decision_flips=flips / max(n, 1))
    log.info("%s judge parity: max |dp(yes)| %.2e, max |d output| %.2e over %d prompts", label, worst_p, worst_logit, n)
    if worst_p > tolerance:
        raise ParityError(f"{label}: p(yes) differs from the reference by {worst_p:.3g} (tolerance {tolerance:g}; outputs by {worst_logit:.3g})")
    return parity


RELATIVE_REFERENCE = "transformers-fp32-eager (relative to the reference's largest value)"


def _compared(engine: Engine, reference, feeds_list: list[dict[str, np.ndarray]], label: str):
    """(engine outputs, reference outputs) for each input, every output checked finite and of
    the reference's shape first (one slot for all of them)."""
    with engine.slot() as slot:
        for feeds in feeds_list:
            got, want = slot.infer(feeds), reference(feeds)
            for name, value in got.items():
                _check_output(label, name, value, want[name])
            yield got, want


def _check_output(label: str, name: str, value: np.ndarray, want: np.ndarray) -> None:
    if not np.all(np.isfinite(value)):
        raise ParityError(f"{label}: output {name} has non-finite values")
    if value.shape != want.shape:
        raise ParityError(f"{label}: output {name} has shape {value.shape}, the reference {want.shape}")
