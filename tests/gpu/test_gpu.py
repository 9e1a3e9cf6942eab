"""On a real NVIDIA GPU (`-m gpu`; skipped without one, each test also skips the GPU targets
whose library is missing: TensorRT, onnxruntime-gpu, or a CUDA PyTorch).

For every GPU target available: the engine set compiles for this GPU, matches the ONNX Runtime
FP32 engine on the CPU, the CUDA-graph path gives the plain path's answers, and a budget that
cannot fit is refused with the plan. TensorRT adds: two engines share one scratch arena.
"""

from __future__ import annotations

import numpy as np
import pytest
from streetcascade.compile.pipeline import compile_cascade
from streetcascade.manifest import read_manifest
from streetcascade.runtime import load_engine_set
from support import SAMPLES, write_config

from streetcascade.errors import BudgetExceeded
from streetcascade.settings import RuntimeConfig

pytestmark = pytest.mark.gpu


def _available(name: str) -> bool:
    if name == "tensorrt":
        try:
            import tensorrt  # noqa: F401

            return True
        except ImportError:
            return False
    if name == "ort-cuda":
        try:
            import onnxruntime

            return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        except ImportError:
            return False
    if name == "aoti":
        try:
            import torch

            return torch.cuda.is_available()
        except ImportError:
            return False
    raise ValueError(name)


TARGETS = {"tensorrt": {"backend": "tensorrt", "device": "cuda"},
           "ort-cuda": {"backend": "onnxruntime", "device": "cuda"},
           "aoti": {"backend": "aoti", "device": "cuda"}}


@pytest.fixture(params=sorted(TARGETS))
def gpu_engine_dir(request, tmp_path_factory, tiny_dinov3_dir):
    name = request.param
    if not _available(name):
        pytest.skip(f"{name}: its library is not installed here")
    root = tmp_path_factory.mktemp(name)
    cfg = write_config(root / "gpu.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4, "precision": "fp16"}],
                       root / "engines", parity_images=str(SAMPLES), target=TARGETS[name])
    return name, compile_cascade(cfg, progress=False)


def test_matches_onnxruntime_fp32(gpu_engine_dir, tiny_engine_dir):
    name, dest = gpu_engine_dir
    m = read_manifest(dest)
    assert m.target.device == "cuda" and m.target.sm
    rng = np.random.default_rng(0)
    images = list(rng.integers(0, 255, (6, 224, 224, 3), dtype=np.uint8))
    with load_engine_set(tiny_engine_dir) as cpu, load_engine_set(dest) as gpu:
        want = cpu.cascade.stages[0].score(images)
        got = gpu.cascade.stages[0].score(images)
    np.testing.assert_allclose(got, want, atol=1e-2)  # FP16 on the GPU vs FP32 on the CPU


def test_cuda_graph_path_equals_plain_path(gpu_engine_dir):
    name, dest = gpu_engine_dir
    x = {"pixels": np.random.default_rng(1).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)}
    with load_engine_set(dest, RuntimeConfig(cuda_graphs=False), warmup=False) as plain_set, plain_set.engines[0].slot() as plain:
        want = plain.infer(x)["logit"]
    with load_engine_set(dest, warmup=False) as es, es.engines[0].slot() as slot:
        outs = [slot.infer(x)["logit"] for _ in range(4)]
        stats = getattr(es.engines[0], "stats", None)
        if stats is not None:
            assert stats["graph_launches"] + stats["graph_fallbacks"] >= 1
    for out in outs:
        np.testing.assert_allclose(out, want, atol=1e-3)


def test_budget_refusal_prints_the_plan(gpu_engine_dir):
    _, dest = gpu_engine_dir
    with pytest.raises(BudgetExceeded, match="(?s)stage1/classifier.*DOES NOT FIT"):
        load_engine_set(dest, RuntimeConfig(budget_bytes=1 << 20))


def test_tensorrt_engines_share_one_arena(tmp_path, tiny_dinov3_dir):
    if not _available("tensorrt"):
        pytest.skip("TensorRT is not installed here")
    cfg = write_config(tmp_path / "two.toml", [
        {"name": "a", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4, "exit_low": 0.0, "exit_high": 1.0},
        {"name": "b", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4, "seed": 1},
    ], tmp_path / "engines", target=TARGETS["tensorrt"])
    dest = compile_cascade(cfg, progress=False)
    with load_engine_set(dest) as es:
        es.cascade.classify(np.full((224, 224, 3), 128, np.uint8))
        arenas = es.backend.arenas
        assert len(arenas._arenas) == 1
        assert arenas.size == max(e.scratch_bytes for e in es.engines)
