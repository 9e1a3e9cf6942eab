"""Tiny synthetic street scenes for the calibration tests: cones and stripes vs plain roads."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ORANGE = (255, 110, 0)


def draw_scene(roadwork: bool, seed: int, size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """A sky / road picture; roadwork scenes add orange cones and an orange-white barrier."""
    rng = np.random.default_rng(seed)
    width, height = size
    img = Image.new("RGB", size, (int(rng.integers(100, 160)), int(rng.integers(150, 200)), 230))
    draw = ImageDraw.Draw(img)
    horizon = height // 2 + int(rng.integers(-5, 5))
    grey = int(rng.integers(70, 110))
    draw.rectangle([0, horizon, width, height], fill=(grey, grey, grey))
    draw.line([width // 2, horizon, width // 2, height], fill=(240, 240, 240), width=2)
    if roadwork:
        for _ in range(int(rng.integers(2, 5))):
            x = int(rng.integers(5, width - 10))
            y = int(rng.integers(horizon + 5, height - 2))
            draw.polygon([(x, y), (x + 8, y), (x + 4, y - 14)], fill=ORANGE)
        top = horizon - 6
        for k in range(0, width, 8):
            draw.rectangle([k, top, k + 3, top + 5], fill=ORANGE)
            draw.rectangle([k + 4, top, k + 7, top + 5], fill=(250, 250, 250))
    return np.asarray(img)


def encode(rgb: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


def orange_score(rgb: np.ndarray) -> float:
    """A stand-in 'model': the fraction of orange pixels, squashed to a probability."""
    r, g, b = (rgb[..., k].astype(np.int32) for k in range(3))
    orange = (r > 180) & (g > 50) & (g < 170) & (b < 90)
    return float(1.0 / (1.0 + np.exp(-(orange.mean() * 400.0 - 2.0))))


@pytest.fixture
def scene():
    """draw_scene(roadwork: bool, seed: int, size=(w, h)) -> HxWx3 uint8."""
    return draw_scene


@pytest.fixture
def encode_image():
    """encode(rgb, fmt="JPEG") -> bytes."""
    return encode


@pytest.fixture
def orange_model():
    """orange_score(rgb) -> P(roadwork)."""
    return orange_score


@pytest.fixture
def sample_photos() -> list[Path]:
    """The repository's bundled street photos (unlabelled), if any."""
    photos = sorted((Path(__file__).resolve().parents[2] / "samples").glob("*.jpg"))
    if not photos:
        pytest.skip("no bundled sample photos in samples/")
    return photos


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """root/roadwork/*.jpg|png (6) + root/no_roadwork/* (6) + one fake image + one stray text file."""
    root = tmp_path / "images"
    for label, dirname in ((1, "roadwork"), (0, "no_roadwork")):
        folder = root / dirname
        folder.mkdir(parents=True)
        for i in range(6):
            fmt = "PNG" if i % 2 else "JPEG"
            (folder / f"img{i}.{fmt.lower()}").write_bytes(encode(draw_scene(bool(label), seed=100 * label + i), fmt))
    (root / "roadwork" / "fake.jpg").write_bytes(b"this is not a jpeg")
    (root / "no_roadwork" / "notes.txt").write_text("not an image")
    return root
