"""Helpers for tests (importable: `tests/` is on pytest's pythonpath)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"

TINY_VIT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)


def write_config(path: Path, stages: list[dict], engines_dir: Path, **top) -> Path:
    """A cascade config for a test. Compiles skip the latency measurement ([target] latency_runs
    = 0) unless the test asks for it: tests/latency/ does, the others need not pay for it."""
    import tomli_w

    top["target"] = {"latency_runs": 0, **top.get("target", {})}
    doc = {"engines_dir": str(engines_dir), "parity_images": str(SAMPLES), **top, "stages": stages}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(doc))
    return path


def ocr_cascade_stages(dinov3_dir: Path) -> list[dict]:
    """Stage 1 a tiny DINOv3 that is never sure (its band covers everything, so every image goes
    on), then PP-OCR on REAL weights (the rapidocr wheel's, cached)."""
    return [
        {"name": "stage1", "family": "dinov3", "source": str(dinov3_dir), "max_batch": 2, "exit_low": 0.01, "exit_high": 0.99},
        {"name": "ocr", "family": "ppocr", "source": "rapidocr", "max_batch": 6, "exit_low": 0.5, "exit_high": 0.5},
    ]


def compile_or_skip(config: Path, what: str) -> Path:
    """The compiled engine set of `config`; a skip saying "NOT CHECKED on <what>" and why when the
    compile fails (weights that cannot be had here)."""
    import pytest

    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.errors import CompileError

    try:
        return compile_cascade(config, progress=False)
    except CompileError as exc:
        pytest.skip(f"NOT CHECKED on {what}: {exc}")


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def rgb(h: int, w: int, value: int = 128) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def fixed_metagraph(table: dict[str, tuple[float, bool]], netuid: int = 72):
    """hotkey -> (stake, validator permit), uids in table order."""
    from streetcascade.miner.metagraph import FixedMetagraph, Neuron

    return FixedMetagraph([Neuron(hk, uid, float(stake), bool(permit)) for uid, (hk, (stake, permit)) in enumerate(table.items())], netuid)


def twice_as_long(call):
    """call(), then busy work until twice its time has passed: a deliberate 2x regression that
    keeps the core busy as real work would (running the engine twice would not: the second run
    finds warm caches)."""
    t0 = time.perf_counter()
    out = call()
    until = 2 * time.perf_counter() - t0
    while time.perf_counter() < until:
        pass
    return out
