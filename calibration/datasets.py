"""Calibration / evaluation datasets: stream labelled images from a folder or parquet files.

Every reader yields `Sample`s: the encoded image bytes (never decoded here: decoding is the
consumer's job, see `iter_decoded`), the label (1 roadwork / 0 not), the source ("real",
"synthetic" or "" unknown) and where it came from. A sample's `key` is the sha256 of its bytes,
so the same picture found twice (two folders, two parquet shards) has one key, and
`split_of(key, ...)` puts it in exactly one of calibration / validation / test.

Bad inputs (not an image, unreadable file, missing label) never stop the stream: each is
logged and, when the caller passes a `bad` list, appended to it as a `BadFile`.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import msgspec
import numpy as np
from PIL import Image, UnidentifiedImageError

from streetcascade.errors import BadInput, ConfigError
from streetcascade.runtime.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

SPLITS = ("calibration", "validation", "test")
DEFAULT_FRACTIONS = (0.2, 0.4, 0.4)
# Folder layout: <root>/[real|synthetic/]{roadwork,no_roadwork}/<image>
LABEL_DIRS = {"roadwork": 1, "no_roadwork": 0}
SOURCE_DIRS = ("real", "synthetic")
_LABEL_WORDS = {
    "1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0,
    "roadwork": 1, "no_roadwork": 0, "none": 0,  # the subnet's CHALLENGE_TYPE names the 0 class "None"
}


class Sample(msgspec.Struct, frozen=True):
    key: str  # sha256 hex of `data`
    data: bytes  # the encoded image, exactly as stored
    label: int  # 1 roadwork, 0 no roadwork
    source: str = ""  # "real", "synthetic" or "" when unknown
    origin: str = ""  # file path, or "<parquet path>#row=<n>"


class BadFile(msgspec.Struct, frozen=True):
    origin: str
    reason: str


def content_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _report(bad: list[BadFile] | None, origin: str, reason: str) -> None:
    log.warning("skipping %s: %s", origin, reason)
    if bad is not None:
        bad.append(BadFile(origin=origin, reason=reason))


def _image_problem(data: bytes) -> str | None:
    """Cheap check that `data` is an image: header parse only (no pixel decode)."""
    if not data:
        return "empty (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except UnidentifiedImageError:
        return "not an image (no known image format recognised)"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"unreadable image header: {exc}"
    if width < 1 or height < 1:
        return f"image has no pixels ({width}x{height})"
    return None


def parse_label(value: object) -> int:
    """Map the label spellings found in CSVs and parquet files to 0/1, or raise BadInput."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value) in (0.0, 1.0):
        return int(value)
    if isinstance(value, (str, bytes)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        word = text.strip().lower()
        if word in _LABEL_WORDS:
            return _LABEL_WORDS[word]
        try:
            number = float(word)
        except ValueError:
            number = None
        if number in (0.0, 1.0):
            return int(number)
    raise BadInput(f"label {value!r} is not one of 0/1, true/false, roadwork/no_roadwork")


def parse_source(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):  # e.g. an `is_synthetic` column
        return "synthetic" if value else "real"
    text = str(value).strip().lower()
    if text in ("real", "synthetic"):
        return text
    if text in ("fake", "generated", "t2i", "i2i", "sdxl"):
        return "synthetic"
    return text


# ---------------------------------------------------------------------------------- folders


def iter_image_folder(
    root: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    *,
    filename_column: str = "filename",
    label_column: str = "label",
    source_column: str | None = None,
    bad: list[BadFile] | None = None,
) -> Iterator[Sample]:
    """Yield the labelled images under `root`, in sorted (deterministic) order.

    Without `labels_csv`: images in `root/roadwork/` (label 1) and `root/no_roadwork/` (label 0),
    optionally one level deeper under `root/real/` and `root/synthetic/`, which then set the
    source. With `labels_csv`: its rows name files (relative to `root`) and labels.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"image folder {str(root)!r} does not exist or is not a directory")
    if labels_csv is not None:
        yield from _iter_csv(root, Path(labels_csv), filename_column, label_column, source_column, bad)
        return
    found_any = False
    for source in ("", *SOURCE_DIRS):
        for dirname, label in LABEL_DIRS.items():
            folder = root / source / dirname if source else root / dirname
            if not folder.is_dir():
                continue
            found_any = True
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                sample = _read_file(path, label, source, bad)
                if sample is not None:
                    yield sample
    if not found_any:
        raise ConfigError(
            f"image folder {str(root)!r} has no roadwork/ or no_roadwork/ subfolder "
            "(nor real/ or synthetic/ ones holding them); pass labels_csv= for other layouts"
        )


def _read_file(path: Path, label: int, source: str, bad: list[BadFile] | None) -> Sample | None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        _report(bad, str(path), f"not an image file suffix ({path.suffix or 'none'})")
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        _report(bad, str(path), f"unreadable: {exc.strerror or exc}")
        return None
    problem = _image_problem(data)
    if problem:
        _report(bad, str(path), problem)
        return None
    return Sample(key=content_key(data), data=data, label=label, source=source, origin=str(path))


def _iter_csv(
    root: Path,
    csv_path: Path,
    filename_column: str,
    label_column: str,
    source_column: str | None,
    bad: list[BadFile] | None,
) -> Iterator[Sample]:
    try:
        handle = csv_path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"labels CSV {str(csv_path)!r} cannot be opened: {exc.strerror or exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        needed = [filename_column, label_column] + ([source_column] if source_column else [])
        missing = [name for name in needed if name not in header]
        if missing:
            raise ConfigError(f"labels CSV {str(csv_path)!r} lacks column(s) {missing}; it has {header}")
        for row_number, row in enumerate(reader, start=2):  # line 1 is the header
            where = f"{csv_path}:{row_number}"
            try:
                label = parse_label(row[label_column])
            except BadInput as exc:
                _report(bad, where, str(exc))
                continue
            name = (row[filename_column] or "").strip()
            if not name:
                _report(bad, where, f"empty {filename_column!r}")
                continue
            path = root / name
            if not path.is_file():
                _report(bad, where, f"file {str(path)!r} does not exist")
                continue
            source = parse_source(row[source_column]) if source_column else ""
            sample = _read_file(path, label, source, bad)
            if sample is not None:
                yield sample


# ---------------------------------------------------------------------------------- parquet


def iter_parquet(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    image_column: str = "image",
    label_column: str = "label",
    source_column: str | None = None,
    *,
    batch_rows: int = 256,
    bad: list[BadFile] | None = None,
) -> Iterator[Sample]:
    """Yield samples from parquet files, streaming `batch_rows` rows at a time.

    The image cell may be raw bytes, a Hugging Face `datasets` Image struct
    (`{"bytes": ..., "path": ...}`) or base64 text (the subnet's own extractor accepts all three).
    """
    import pyarrow.parquet as pq  # offline-only dependency: imported where it is needed

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    columns = [image_column, label_column] + ([source_column] if source_column else [])
    for path in paths:
        path = Path(path)
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
            _report(bad, str(path), f"not a readable parquet file: {exc}")
            continue
        names = parquet.schema_arrow.names
        missing = [name for name in columns if name not in names]
        if missing:
            raise ConfigError(f"parquet {str(path)!r} lacks column(s) {missing}; it has {names}")
        row = 0
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            cells = {name: batch.column(name).to_pylist() for name in columns}
            for k in range(batch.num_rows):
                sample = _sample_from_row(
                    path, row + k, cells[image_column][k], cells[label_column][k],
                    cells[source_column][k] if source_column else None, bad,
                )
                if sample is not None:
                    yield sample
            row += batch.num_rows


def _sample_from_row(
    path: Path, row: int, image: object, label: object, source: object, bad: list[BadFile] | None
) -> Sample | None:
    origin = f"{path}#row={row}"
    try:
        data = _image_bytes(image)
        label_value = parse_label(label)
    except BadInput as exc:
        _report(bad, origin, str(exc))
        return None
    problem = _image_problem(data)
    if problem:
        _report(bad, origin, problem)
        return None
    return Sample(key=content_key(data), data=data, label=label_value, source=parse_source(source), origin=origin)


def _image_bytes(cell: object) -> bytes:
    if isinstance(cell, dict):  # HF datasets Image feature: {"bytes": b"...", "path": "..."}
        cell = cell.get("bytes")
    if cell is None:
        raise BadInput("image cell is empty (null)")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell)
    if isinstance(cell, str):
        try:
            return base64.b64decode(cell, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("image cell is text but not base64") from None
    raise BadInput(f"image cell has type {type(cell).__name__}, expected bytes or a {{'bytes': ...}} struct")


# ---------------------------------------------------------------------------------- splits


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(not np.isfinite(f) or f < 0 for f in fractions):
        raise ConfigError(f"split fractions must be 3 non-negative numbers (calibration, validation, test), got {fractions!r}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must sum to 1, got {fractions!r} (sum {sum(fractions)})")
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def split_of(key: str, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """The split a content key belongs to: a pure function of (key, seed, fractions).

    Hashing the key with the seed (instead of shuffling a list) means a sample's split never
    depends on which other files are present or on reading order.
    """
    calib, val, _ = _check_fractions(fractions)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    if u < calib:
        return "calibration"
    if u < calib + val:
        return "validation"
    return "test"


def iter_split(
    samples: Iterable[Sample],
    split: str,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    dedupe: bool = True,
) -> Iterator[Sample]:
    """Keep the samples of one split; with `dedupe`, yield each content key once."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    fractions = _check_fractions(fractions)
    seen: set[str] = set()
    for sample in samples:
        if dedupe:
            if sample.key in seen:
                log.debug("duplicate image %s (%s) skipped", sample.key[:12], sample.origin)
                continue
            seen.add(sample.key)
        if split_of(sample.key, seed, fractions) == split:
            yield sample


def decode_rgb(sample: Sample) -> np.ndarray:
    """Decode a sample to HxWx3 uint8 RGB, or raise BadInput (truncated / corrupt pixels)."""
    from streetcascade.runtime.images import decode_image

    return decode_image(sample.data)


def iter_decoded(samples: Iterable[Sample], bad: list[BadFile] | None = None) -> Iterator[tuple[Sample, np.ndarray]]:
    """Pair each sample with its decoded RGB array; images whose pixels fail to decode are reported."""
    for sample in samples:
        try:
            yield sample, decode_rgb(sample)
        except BadInput as exc:
            _report(bad, sample.origin, str(exc))
