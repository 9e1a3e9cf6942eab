"""Synthetic street scenes for tests, benchmarks and smoke runs: sky + road, and for roadwork
scenes orange cones and an orange-white barrier. Not a training set: a stand-in with a real,
learnable difference between the classes, so heads fit and decision flips mean something."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ORANGE = (255, 110, 0)


def draw_scene(roadwork: bool, seed: int, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    width, height = size
    img = Image.new("RGB", size, (int(rng.integers(90, 170)), int(rng.integers(140, 210)), int(rng.integers(200, 250))))
    draw = ImageDraw.Draw(img)
    horizon = height // 2 + int(rng.integers(-height // 10, height // 10))
    grey = int(rng.integers(60, 120))
    draw.rectangle([0, horizon, width, height], fill=(grey, grey, grey))
    for _ in range(int(rng.integers(0, 4))):  # buildings / cars: clutter common to both classes
        x, w, h = int(rng.integers(0, width)), int(rng.integers(width // 10, width // 4)), int(rng.integers(height // 8, height // 3))
        colour = tuple(int(c) for c in rng.integers(30, 220, 3))
        draw.rectangle([x, horizon - h, x + w, horizon], fill=colour)
    draw.line([width // 2, horizon, width // 2, height], fill=(240, 240, 240), width=max(2, width // 80))
    if roadwork:
        s = max(1, width // 96)
        for _ in range(int(rng.integers(2, 6))):
            x = int(rng.integers(5, width - 10 * s))
            y = int(rng.integers(horizon + 5, height - 2))
            draw.polygon([(x, y), (x + 8 * s, y), (x + 4 * s, y - 14 * s)], fill=ORANGE)
        top = horizon - 6 * s
        for k in range(0, width, 8 * s):
            draw.rectangle([k, top, k + 3 * s, top + 5 * s], fill=ORANGE)
            draw.rectangle([k + 4 * s, top, k + 7 * s, top + 5 * s], fill=(250, 250, 250))
    arr = np.asarray(img, dtype=np.int16)
    arr = arr + rng.integers(-12, 13, arr.shape, dtype=np.int16)  # sensor noise
    return np.clip(arr, 0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write_scene_folder(root: str | Path, n_per_class: int, seed: int = 0, size: tuple[int, int] = (320, 240), sources: bool = False) -> Path:
    """root/[real|synthetic/]{roadwork,no_roadwork}/*.jpg, `n_per_class` images per label."""
    root = Path(root)
    for label, dirname in ((1, "roadwork"), (0, "no_roadwork")):
        for i in range(n_per_class):
            sub = ("real" if i % 2 else "synthetic") if sources else ""
            folder = root / sub / dirname if sub else root / dirname
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{dirname}-{seed}-{i:04d}.jpg").write_bytes(encode(draw_scene(bool(label), seed * 100_003 + 2 * i + label, size)))
    return root
