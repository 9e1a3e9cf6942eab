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


def parity_images(size: int, folder: Path | None, n_random: int = 8, seed: int = 0) -> tuple[np.ndarray, int]:
    """Sample images from `folder` (resized) + seeded noise and flat images. Returns (images, n_real)."""
    real = []
    if folder is not None and folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                real.append(resize_to(decode_image(path.read_bytes()), size))
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
    with engine.slot() as slot:
        for feeds in feeds_list:
            got, want = slot.infer(feeds), reference(feeds)
            for name, value in got.items():
                if not np.all(np.isfinite(value)):
                    raise ParityError(f"{label}: output {name} has non-finite values")
                if value.shape != want[name].shape:
                    raise ParityError(f"{label}: output {name} has shape {value.shape}, the reference {want[name].shape}")
                worst = max(worst, float(np.abs(value.astype(np.float64) - want[name]).max()))
    parity = Parity(reference="onnx-source-onnxruntime", n_images=len(feeds_list), max_abs_prob_error=worst,
                    max_abs_logit_error=worst, tolerance=tolerance)
    log.info("%s tensor parity: max |d| %.2e over %d inputs", label, worst, len(feeds_list))
    if worst > tolerance:
        raise ParityError(f"{label}: max output difference {worst:.3g} vs the source graph exceeds the tolerance {tolerance:g}")
    return parity
