"""FP8 for stage 1 on the aoti target (compile/fp8.py): what the CPU can show. PyTorch runs
float8 `_scaled_mm` on the CPU, so the module rewrite, its numerics, its export + AOTInductor
compile and the accuracy gate's wiring run here; the refusal without FP8 tensor cores is
checked on the CPU and on a simulated SM 8.6 GPU. The run on an FP8 GPU waits for one
(tests/gpu/test_gpu.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from streetcascade.compile import fp8
from streetcascade.compile.pipeline import compile_cascade
from support import SAMPLES, write_config

import fake_cuda
from streetcascade.errors import CompileError


@pytest.fixture(scope="module")
def tiny_graph(tiny_dinov3_dir, tmp_path_factory):
    from streetcascade.compile.models import get_family
    from streetcascade.config import StageConfig

    stage = StageConfig(name="stage1", family="dinov3", source=str(tiny_dinov3_dir), max_batch=4)
    return get_family("dinov3").load(stage, tmp_path_factory.mktemp("fp8") / "c.toml").graphs[0]


def _labels(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label\n" + "".join(f"{p.name},{i % 2}\n" for i, p in enumerate(sorted(SAMPLES.glob("*.jpg")))))
    return {"data": str(SAMPLES), "labels_csv": str(csv), "calibration_samples": 4, "validation_samples": 4}


def test_granularity_follows_the_sm():
    assert [fp8.granularity_for(sm) for sm in ("8.9", "9.0", "10.0", "12.0")] == ["tensorwise", "rowwise", "rowwise", "rowwise"]
    assert not fp8.has_fp8("8.6") and fp8.has_fp8("8.9")
    with pytest.raises(CompileError, match=r"SM 8\.6 has no FP8 tensor cores"):
        fp8.granularity_for("8.6")


@pytest.mark.parametrize("granularity", fp8.GRANULARITIES)
def test_rewrite_replaces_the_block_linears_only_and_stays_close(tiny_graph, granularity):
    module = tiny_graph.module
    converted, names = fp8.to_float8(module, granularity)
    layers = module.backbone.config.num_hidden_layers
    assert len(names) == 6 * layers and all(n.startswith("backbone.model.layer.") for n in names)  # q, k, v, o, up, down
    kinds = {n: type(m).__name__ for n, m in converted.named_modules()}
    assert all(kinds[n] == "Float8Linear" for n in names)
    assert not any(isinstance(m, torch.nn.Linear) for m in converted.backbone.model.modules())
    assert isinstance(converted.head.linear if hasattr(converted.head, "linear") else next(converted.head.modules()), torch.nn.Module)
    assert any(isinstance(m, torch.nn.Linear) for m in converted.head.modules())  # the head stays bf16
    assert converted.backbone.embeddings.patch_embeddings.weight.dtype == torch.bfloat16
    w = dict(converted.named_buffers())[f"{names[0]}.weight_fp8"]
    assert w.dtype == torch.float8_e4m3fn
    scale = dict(converted.named_buffers())[f"{names[0]}.weight_scale"]
    assert scale.dtype == torch.float32 and scale.shape == ((1, w.shape[0]) if granularity == "rowwise" else ())
    assert all(type(m) is not fp8.Float8Linear for m in module.modules()) and next(module.parameters()).dtype == torch.float32  # original kept
    images = np.random.default_rng(0).integers(0, 256, (6, 224, 224, 3), dtype=np.uint8)
    with torch.no_grad():
        got = converted(torch.from_numpy(images)).float().numpy().reshape(-1)
    want = np.asarray(tiny_graph.reference(images)).reshape(-1)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    assert np.abs(sig(got) - sig(want)).max() < 0.05  # FP8 blocks + bf16 rest vs FP32, random weights


def test_layers_fp8_kernels_cannot_take_stay_bf16():
    block = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 10))
    converted, names = fp8.to_float8(block, "rowwise")
    assert names == ["0"] and isinstance(converted[2], torch.nn.Linear)


def test_refused_on_the_cpu_naming_what_it_needs(tmp_path, tiny_dinov3_dir):
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "precision": "fp8"}],
                       tmp_path / "engines", target={"backend": "aoti", "device": "cpu"}, calibration=_labels(tmp_path))
    with pytest.raises(CompileError, match=r"fp8 is built by the aoti target on an NVIDIA GPU with FP8 tensor cores \(SM 8\.9\+"):
        compile_cascade(cfg, progress=False)


def test_refused_on_a_gpu_without_fp8(monkeypatch, tmp_path, tiny_dinov3_dir):
    from streetcascade import gpu

    fake_cuda.install(monkeypatch, fake_cuda.FakeCuda(name="NVIDIA GeForce RTX 3090", sm=(8, 6)))
    try:
        cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "precision": "fp8"}],
                           tmp_path / "engines", target={"backend": "aoti", "device": "cuda"}, calibration=_labels(tmp_path))
        with pytest.raises(CompileError, match=r"this GPU is SM 8\.6 \(NVIDIA GeForce RTX 3090\)"):
            compile_cascade(cfg, progress=False)
    finally:
        gpu.probe_gpus.cache_clear()


@pytest.mark.slow
def test_fp8_package_compiles_and_is_gated_like_int8(tmp_path, tiny_graph):
    """The target's fp8 build on the CPU (the SM check bypassed: PyTorch runs float8 matmuls on
    the CPU): export + AOTInductor of the Float8Linear module, loaded through the backend, the
    gate's figures vs the FP32 reference on the validation split, and a refusal that deletes
    the package when the limits are not met."""
    import msgspec

    from streetcascade.compile.accuracy_gate import AccuracyGateFailed
    from streetcascade.compile.targets.aoti import TARGET
    from streetcascade.compile.targets.base import BuildJob
    from streetcascade.config import load_config

    if not __import__("shutil").which("c++") and not __import__("shutil").which("g++"):
        pytest.skip("no C++ compiler here: AOTInductor cannot build for the CPU")
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": "random:tiny", "precision": "fp8", "max_batch": 4}],
                       tmp_path / "engines", target={"backend": "aoti", "device": "cpu"}, calibration={**_labels(tmp_path), "max_flip_rate": 1.0,
                                                                                                        "max_mcc_drop": 2.0, "max_accuracy_drop": 2.0, "max_auc_drop": 2.0})
    config = load_config(cfg)
    job = BuildJob(config.stages[0], config, cfg, tiny_graph.decl.io, tmp_path / "raw.onnx", tmp_path / "stage1.classifier.fp8.pt2", graph=tiny_graph)
    built = TARGET.build(job)
    gate = built.accuracy_gate
    assert gate.method == "fp8-dynamic-rowwise" and gate.reference == "pytorch-fp32" and gate.quantized_nodes == 12 and gate.passed
    assert gate.n_images > 0 and gate.max_abs_prob_error < 0.05
    assert any("12 linear layers in float8_e4m3fn" in n for n in built.notes) and built.path.exists()
    strict = msgspec.structs.replace(config, calibration=msgspec.structs.replace(config.calibration, max_prob_error=0.0))
    with pytest.raises(AccuracyGateFailed, match="fp8 engine refused by the accuracy gate"):
        TARGET._gate_fp8(BuildJob(strict.stages[0], strict, cfg, job.io, job.raw, job.out, graph=tiny_graph), 12, "rowwise")
    assert not built.path.exists()
