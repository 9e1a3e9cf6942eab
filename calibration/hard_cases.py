"""Export the images a model gets wrong or nearly wrong, for review and retraining.

Misclassified: the rounded answer differs from the label. Low margin: answered right, but the
probability lies within `margin` of the validator's 0.5 cut. Each exported image is written with
its original bytes (or the challenge JPEG the model saw, when given) under
`<out>/misclassified/` or `<out>/low_margin/`, listed in `<out>/hard_cases.csv`, and, when
FiftyOne is importable and `fiftyone_name` is given, loaded into a FiftyOne dataset.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
from PIL import Image

from streetcascade.calibration.datasets import Sample
from streetcascade.errors import BadInput

log = logging.getLogger(__name__)

CSV_COLUMNS = ("file", "kind", "key", "label", "prob", "margin", "level", "source", "origin")


class HardCase(msgspec.Struct, frozen=True):
    file: str  # path relative to the export folder
    kind: str  # "misclassified" | "low_margin"
    key: str
    label: int
    prob: float
    margin: float  # |prob - 0.5|
    level: int  # augmentation level, -1 when unknown
    source: str
    origin: str


def _suffix(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "").lower()
    except (OSError, SyntaxError, ValueError) as exc:  # bytes unreadable as an image: keep them, unnamed
        log.debug("no image format recognised for a hard case (%s); writing .bin", exc)
        return ".bin"
    return {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "gif": ".gif", "tiff": ".tif"}.get(fmt, ".bin")


def export_hard_cases(
    samples: Sequence[Sample],
    probs: Sequence[float],
    out_dir: str | os.PathLike,
    *,
    margin: float = 0.15,
    levels: Sequence[int] | None = None,
    images: Sequence[bytes] | None = None,
    limit: int | None = None,
    fiftyone_name: str | None = None,
) -> list[HardCase]:
    """Write hard cases (hardest first: wrong before right, then by confidence) and return them.

    `images` replaces the bytes written per sample (e.g. the augmented challenge JPEGs);
    `-1` probabilities (no answer) are skipped.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(samples),):
        raise BadInput(f"{p.shape} probabilities for {len(samples)} samples")
    if not 0.0 <= margin <= 0.5:
        raise BadInput(f"margin must be within [0, 0.5], got {margin}")
    for name, column in (("levels", levels), ("images", images)):
        if column is not None and len(column) != len(samples):
            raise BadInput(f"{name} has {len(column)} entries for {len(samples)} samples")
    out = Path(out_dir)
    rows: list[tuple[float, int]] = []  # (sort key, index)
    for i, sample in enumerate(samples):
        if p[i] == -1.0 or not np.isfinite(p[i]):
            continue
        wrong = int(np.round(p[i])) != sample.label
        distance = abs(p[i] - 0.5)
        if wrong:
            rows.append((-1.0 - distance, i))  # confidently wrong first
        elif distance <= margin:
            rows.append((distance, i))
    rows.sort()
    if limit is not None:
        rows = rows[:limit]

    cases: list[HardCase] = []
    for _, i in rows:
        sample = samples[i]
        kind = "misclassified" if int(np.round(p[i])) != sample.label else "low_margin"
        data = images[i] if images is not None else sample.data
        level = int(levels[i]) if levels is not None else -1
        name = f"{kind}/{sample.key[:16]}" + (f"_L{level}" if level >= 0 else "") + _suffix(data)
        (out / kind).mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
        cases.append(HardCase(name, kind, sample.key, sample.label, float(p[i]), float(abs(p[i] - 0.5)), level, sample.source, sample.origin))

    out.mkdir(parents=True, exist_ok=True)
    with (out / "hard_cases.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for case in cases:
            writer.writerow([getattr(case, column) for column in CSV_COLUMNS])
    if fiftyone_name:
        _to_fiftyone(cases, out, fiftyone_name)
    log.info("exported %d hard cases to %s", len(cases), out)
    return cases


def _to_fiftyone(cases: list[HardCase], out: Path, name: str) -> None:
    try:
        import fiftyone as fo
    except ImportError:
        log.info("fiftyone is not installed; skipping the FiftyOne dataset (CSV and images are written)")
        return
    dataset = fo.Dataset(name, overwrite=True)
    for case in cases:
        sample = fo.Sample(filepath=str((out / case.file).resolve()))
        sample["ground_truth"] = fo.Classification(label="roadwork" if case.label else "no_roadwork")
        answer = "roadwork" if np.round(case.prob) == 1 else "no_roadwork"
        sample["prediction"] = fo.Classification(label=answer, confidence=case.prob)
        sample["kind"], sample["level"], sample["source"], sample["origin"] = case.kind, case.level, case.source, case.origin
        dataset.add_sample(sample)
    dataset.persistent = True
