"""Shared fixtures: tiny random-initialised checkpoints built from real transformers
configs, saved to disk and loaded back through the real loading code; compiled once per
session."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from support import SAMPLES, compile_or_skip, ocr_cascade_stages, write_config  # noqa: F401


def has_cuda() -> bool:
    try:
        from cuda.bindings import runtime  # type: ignore

        err, count = runtime.cudaGetDeviceCount()
        return int(err) == 0 and count > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """CLI entry points configure the root logger with the (captured) stderr of the test that
    ran them; put it back so later tests do not log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def tiny_checkpoint(tmp_path_factory, family: str, seed: int = 0, **options) -> Path:
    """The family's own tiny test checkpoint (its real config class, saved like a real one);
    `options`: the family's own (a VLM family's `preset`)."""
    from streetcascade.compile.models import get_family

    return get_family(family).write_test_checkpoint(tmp_path_factory.mktemp("ckpt") / family, seed, **options)


@pytest.fixture(scope="session")
def tiny_dinov3_dir(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory, "dinov3", seed=0)


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory, "hf-classifier", seed=1)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory, tiny_dinov3_dir) -> Path:
    root = tmp_path_factory.mktemp("cfg")
    return write_config(root / "cascade.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4}], root / "engines")


@pytest.fixture(scope="session")
def tiny_engine_dir(tiny_config) -> Path:
    from streetcascade.compile.pipeline import compile_cascade

    return compile_cascade(tiny_config, progress=False)


@pytest.fixture(scope="session")
def tiny_ocr_engine_dir(tmp_path_factory, tiny_dinov3_dir) -> Path:
    """Stage 1 a tiny random DINOv3 that is never sure (its band covers everything), then PP-OCR
    on REAL weights (the rapidocr wheel's, cached); skips, saying so, when they cannot be had."""
    root = tmp_path_factory.mktemp("ocr")
    return compile_or_skip(write_config(root / "c.toml", ocr_cascade_stages(tiny_dinov3_dir), root / "engines"), "real PP-OCR weights")


@pytest.fixture
def private_cache(tmp_path_factory, monkeypatch):
    """streetcascade's cache (e.g. the dequantized float copies of AutoAWQ checkpoints) in a test
    folder, not ~/.cache; a test module asks for it with pytest.mark.usefixtures("private_cache")."""
    monkeypatch.setenv("STREETCASCADE_CACHE", str(tmp_path_factory.getbasetemp() / "sc-cache"))


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """(family, preset) -> (checkpoint dir, compiled engine set) of a tiny VLM judge (fp32, 224 px,
    max_batch 2), built once per session; `preset`: another of the family's test shapes
    (smolvlm: "tiny-idefics3", the Idefics3 classes)."""
    from streetcascade.compile.pipeline import compile_cascade

    built = {}

    def get(family: str, preset: str = "tiny"):
        if (family, preset) not in built:
            root = tmp_path_factory.mktemp(family)
            ckpt = tiny_checkpoint(tmp_path_factory, family, preset=preset)
            cfg = write_config(root / "c.toml", [{"name": "judge", "family": family, "source": str(ckpt), "input_size": 224, "max_batch": 2}],
                               root / "engines")
            built[family, preset] = (ckpt, compile_cascade(cfg, progress=False))
        return built[family, preset]

    return get


@pytest.fixture()
def engine_copy(tiny_engine_dir, tmp_path) -> Path:
    """A private copy of the compiled engine set, for tests that damage it."""
    dest = tmp_path / tiny_engine_dir.name
    shutil.copytree(tiny_engine_dir, dest)
    return dest


@pytest.fixture()
def sample_bytes() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SAMPLES.glob("*.jpg"))}
