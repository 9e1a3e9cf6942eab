"""Shared fixtures: tiny random-initialised checkpoints built from real transformers
configs, saved to disk and loaded back through the real loading code; compiled once per
session."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from support import SAMPLES, TINY_VIT, write_config  # noqa: F401


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


@pytest.fixture(scope="session")
def tiny_dinov3_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "dinov3-tiny"
    config = DINOv3ViTConfig(**TINY_VIT, patch_size=16, num_register_tokens=4, layerscale_value=1e-5, image_size=224)
    DINOv3ViTModel(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return path


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "vit-tiny"
    config = ViTConfig(**TINY_VIT, image_size=224, num_labels=2, id2label={0: "no_roadwork", 1: "roadwork"}, label2id={"no_roadwork": 0, "roadwork": 1})
    ViTForImageClassification(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255}))
    return path


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory, tiny_dinov3_dir) -> Path:
    root = tmp_path_factory.mktemp("cfg")
    return write_config(root / "cascade.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4}], root / "engines")


@pytest.fixture(scope="session")
def tiny_engine_dir(tiny_config) -> Path:
    from streetcascade.compile.pipeline import compile_cascade

    return compile_cascade(tiny_config, progress=False)


@pytest.fixture()
def engine_copy(tiny_engine_dir, tmp_path) -> Path:
    """A private copy of the compiled engine set, for tests that damage it."""
    dest = tmp_path / tiny_engine_dir.name
    shutil.copytree(tiny_engine_dir, dest)
    return dest


@pytest.fixture()
def sample_bytes() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SAMPLES.glob("*.jpg"))}
