"""On a real NVIDIA GPU (`-m gpu`; skipped without one, each test also skips the GPU targets
whose library is missing: TensorRT, onnxruntime-gpu, or a CUDA PyTorch).

For every GPU target available: the engine set compiles for this GPU, matches the ONNX Runtime
FP32 engine on the CPU, the CUDA-graph path captures (no fallback) and gives the plain path's
answers, and a budget that cannot fit is refused with the plan. TensorRT adds: two engines
share one scratch arena. AOTInductor adds: a capture that fails (the multi-threaded runner,
as on the H200) followed by a good compile and capture in the same process; fp8 where the GPU
has FP8 tensor cores.

The tiny test checkpoints are transformers models: without transformers (a GPU machine that
lacks it) the whole module skips, saying so.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the GPU tests build tiny DINOv3 checkpoints with transformers, which is not installed here")
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


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, tiny_dinov3_dir):
    """Each target's fp16 engine set, compiled once for the module (compiles take most of the
    GPU check's test time)."""
    done = {}

    def get(name):
        if name not in done:
            root = tmp_path_factory.mktemp(name)
            cfg = write_config(root / "gpu.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4,
                                                    "precision": "fp16"}], root / "engines", parity_images=str(SAMPLES), target=TARGETS[name])
            done[name] = compile_cascade(cfg, progress=False)
        return done[name]

    return get


@pytest.fixture(scope="module", params=sorted(TARGETS))
def gpu_engine_dir(request, compiled):
    name = request.param
    if not _available(name):
        pytest.skip(f"{name}: its library is not installed here")
    return name, compiled(name)


def test_matches_onnxruntime_fp32(gpu_engine_dir, request):
    pytest.importorskip("onnxruntime", reason="the reference engine here is ONNX Runtime's on the CPU, and onnxruntime is not installed")
    tiny_engine_dir = request.getfixturevalue("tiny_engine_dir")
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
        if stats is not None:  # TensorRT and AOTInductor count; ORT keeps its graphs to itself
            assert stats["graph_fallbacks"] == 0 and stats["graph_launches"] >= 1, stats
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


def _aoti_config(root, tiny_dinov3_dir, precision="fp16", seed=0, **top):
    return write_config(root / "gpu.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4,
                                             "precision": precision, "seed": seed}],
                        root / "engines", parity_images=str(SAMPLES), target=TARGETS["aoti"], **top)


def test_aoti_failed_capture_then_a_good_compile_and_capture(tmp_path, tiny_dinov3_dir, compiled):
    """The H200 failure, on purpose: capture the package through the default (multi-threaded)
    runner, which synchronises under capture (or, on a PyTorch where that happens to capture,
    a synchronisation forced inside the capture). The process must stay usable: random ops
    work, the next AOTInductor compile succeeds, and its engine captures and replays."""
    if not _available("aoti"):
        pytest.skip("aoti: PyTorch here has no CUDA")
    import torch
    from torch._inductor import aoti_load_package

    from streetcascade.runtime.backends.torch_graphs import TorchGraphCapture

    (package,) = compiled("aoti").glob("*.pt2")
    model = aoti_load_package(str(package))  # the default runner: not capturable
    stream = torch.cuda.Stream()
    x = torch.zeros((2, 224, 224, 3), dtype=torch.uint8, device="cuda")
    with torch.cuda.stream(stream), torch.no_grad():
        model(x)
        model(x)
    capturer = TorchGraphCapture(torch, torch.device("cuda:0"), stream)

    def run_then_sync():
        out = model(x)
        torch.cuda.synchronize()  # not permitted while capturing, whatever the runner does
        return out

    with torch.no_grad():
        graph, _, why = capturer.capture(run_then_sync)
    assert graph is None and why, "the capture was expected to fail"
    torch.rand(8, device="cuda").sum().item()  # "Offset increment outside graph capture" before the repair
    second = compile_cascade(_aoti_config(tmp_path, tiny_dinov3_dir, seed=1), progress=False)  # another head: a compile of its own
    images = {"pixels": np.random.default_rng(2).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)}
    with load_engine_set(second, RuntimeConfig(cuda_graphs=False), warmup=False) as plain_set, plain_set.engines[0].slot() as plain:
        want = plain.infer(images)["logit"]
    with load_engine_set(second, warmup=False) as es, es.engines[0].slot() as slot:
        outs = [slot.infer(images)["logit"] for _ in range(4)]
        assert es.engines[0].stats["graph_fallbacks"] == 0 and es.engines[0].stats["graph_launches"] >= 2
    for out in outs:
        np.testing.assert_allclose(out, want, atol=1e-3)


def test_aoti_fp8_where_the_gpu_has_it(tmp_path, tiny_dinov3_dir):
    """fp8 builds, passes its gate (limits open: random weights) and parity on SM 8.9+; below,
    the build is refused naming the SM."""
    if not _available("aoti"):
        pytest.skip("aoti: PyTorch here has no CUDA")
    from streetcascade.compile import fp8
    from streetcascade.errors import CompileError
    from streetcascade.gpu import probe_gpus

    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label\n" + "".join(f"{p.name},{i % 2}\n" for i, p in enumerate(sorted(SAMPLES.glob("*.jpg")))))
    calibration = {"data": str(SAMPLES), "labels_csv": str(csv), "calibration_samples": 4, "validation_samples": 16,
                   "max_flip_rate": 1.0, "max_mcc_drop": 2.0, "max_accuracy_drop": 2.0, "max_auc_drop": 2.0}
    cfg = _aoti_config(tmp_path, tiny_dinov3_dir, "fp8", calibration=calibration)
    sm = probe_gpus()[0].sm
    if not fp8.has_fp8(sm):
        with pytest.raises(CompileError, match=f"this GPU is SM {sm}"):
            compile_cascade(cfg, progress=False)
        return
    dest = compile_cascade(cfg, progress=False)
    g = read_manifest(dest).stages[0].graphs[0]
    assert g.precision == "fp8" and g.accuracy_gate.method == f"fp8-dynamic-{fp8.granularity_for(sm)}" and g.accuracy_gate.quantized_nodes == 12
    assert g.parity.max_abs_prob_error < 0.15
