"""Turn dataset samples into the challenges a validator would send: augmented, then JPEG.

Each sample's augmentation is drawn from a generator seeded by (seed, content key), so an image
gets the same level and parameters whatever order or subset it is read in: calibration,
evaluation and hard-case export all see the same challenge for the same file and seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import msgspec
import numpy as np

from streetcascade.calibration.augment import VALIDATOR_FLIP_P, augment_with_params, draw_level, encode_like_validator
from streetcascade.calibration.datasets import BadFile, Sample, iter_decoded


class Challenge(msgspec.Struct, frozen=True):
    sample: Sample
    level: int  # augmentation level 0-3
    jpeg: bytes  # what the miner receives (base64-decoded)
    params: dict  # drawn augmentation parameters, for reports


def challenge_rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"challenge:{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def iter_challenges(
    samples: Iterable[Sample],
    seed: int = 0,
    *,
    level: int | None = None,
    flip_p: float = VALIDATOR_FLIP_P,
    bad: list[BadFile] | None = None,
) -> Iterator[Challenge]:
    """Yield one validator-style challenge per decodable sample; `level` forces one level."""
    for sample, rgb in iter_decoded(samples, bad):
        rng = challenge_rng(seed, sample.key)
        chosen = draw_level(rng) if level is None else level
        pixels, params = augment_with_params(rgb, chosen, rng, flip_p=flip_p)
        yield Challenge(sample=sample, level=chosen, jpeg=encode_like_validator(pixels), params=params)
