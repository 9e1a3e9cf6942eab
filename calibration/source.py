"""From a `[calibration]` config table (or CLI flags) to validator-style challenges.

`open_samples` streams the labelled samples (image folder, labels CSV or parquet files);
`load_challenges` keeps one content-hash split, turns each sample into the challenge a validator
would send (`iter_challenges`: augmentation level drawn 1/4 each, then JPEG) and decodes that
JPEG back to the RGB array the miner would see. Deterministic for a given (seeds, data).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streetcascade.calibration.challenges import iter_challenges
from streetcascade.calibration.datasets import DEFAULT_FRACTIONS, SPLITS, BadFile, Sample, iter_image_folder, iter_parquet, iter_split
from streetcascade.errors import BadInput, ConfigError
from streetcascade.progress import QUIET, Progress
from streetcascade.runtime.images import decode_image, resize_to

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSpec:
    """Where labelled images come from (one of `folder` or `parquet`)."""

    folder: Path | None = None
    labels_csv: Path | None = None
    filename_column: str = "filename"
    parquet: tuple[Path, ...] = ()
    image_column: str = "image"
    label_column: str = "label"
    source_column: str = ""

    @classmethod
    def from_config(cls, cal, config_path: str | Path) -> "DataSpec":
        """From a `CalibrationConfig`; paths relative to the config file, parquet globs expanded."""
        from streetcascade.config import resolve_relative

        if cal is None or not cal.has_data():
            raise ConfigError(f"{config_path}: no [calibration] data (`data = \"FOLDER\"` or `parquet = [...]`)")
        folder = resolve_relative(config_path, cal.data) if cal.data else None
        csv_path = resolve_relative(config_path, cal.labels_csv) if cal.labels_csv else None
        files = expand_parquet([str(resolve_relative(config_path, p)) for p in cal.parquet])
        return cls(folder, csv_path, cal.filename_column, files, cal.image_column, cal.label_column, cal.source_column)


def expand_parquet(patterns: Sequence[str]) -> tuple[Path, ...]:
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        if not matches:
            raise ConfigError(f"parquet pattern {pattern!r} matches no file")
        for m in matches:
            if not Path(m).is_file():
                raise ConfigError(f"parquet file {m!r} does not exist")
            files.append(Path(m))
    return tuple(files)


def open_samples(spec: DataSpec, bad: list[BadFile] | None = None) -> Iterator[Sample]:
    if spec.folder is not None and spec.parquet:
        raise ConfigError("give an image folder or parquet files, not both")
    if spec.folder is not None:
        if not spec.folder.is_dir():
            raise ConfigError(f"calibration data folder {str(spec.folder)!r} does not exist")
        return iter_image_folder(
            spec.folder, spec.labels_csv, filename_column=spec.filename_column, label_column=spec.label_column,
            source_column=spec.source_column or None, bad=bad,
        )
    if spec.parquet:
        return iter_parquet(list(spec.parquet), spec.image_column, spec.label_column, spec.source_column or None, bad=bad)
    raise ConfigError("no labelled data given (an image folder or parquet files)")


@dataclass
class ChallengeSet:
    """Decoded challenges of one split, in reading order."""

    samples: list[Sample] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)  # HxWx3 uint8 as the miner decodes them
    jpegs: list[bytes] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([s.label for s in self.samples], dtype=np.int64)

    @property
    def sources(self) -> list[str]:
        return [s.source for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, size: int) -> np.ndarray:
        """All images resized to `size` x `size`, stacked (N, size, size, 3) uint8."""
        if not self.images:
            return np.zeros((0, size, size, 3), dtype=np.uint8)
        return np.stack([resize_to(img, size) for img in self.images])


def load_challenges(
    samples: Iterator[Sample],
    split: str,
    *,
    split_seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    challenge_seed: int = 0,
    limit: int | None = None,
    bad: list[BadFile] | None = None,
    progress: Progress = QUIET,
) -> ChallengeSet:
    """Challenges of `split` ("calibration" | "validation" | "test" | "all"), at most `limit`."""
    if split != "all" and split not in SPLITS:
        raise ConfigError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
    if split != "all":
        samples = iter_split(samples, split, split_seed, fractions)
    out = ChallengeSet()
    what = f"{split} challenges (augment + JPEG like a validator)" + (f", up to {limit}" if limit else "")
    for challenge in progress.track(iter_challenges(samples, challenge_seed, bad=bad), what, total=limit):
        try:
            rgb = decode_image(challenge.jpeg)
        except BadInput as exc:  # our own JPEG: should never happen, but never stop the stream
            log.warning("challenge for %s does not decode: %s", challenge.sample.origin, exc)
            continue
        out.samples.append(challenge.sample)
        out.images.append(rgb)
        out.jpegs.append(challenge.jpeg)
        out.levels.append(challenge.level)
        if limit is not None and len(out) >= limit:
            break
    return out
