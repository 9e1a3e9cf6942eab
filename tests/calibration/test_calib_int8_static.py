"""int8-static: calibration config, QDQ quantization, the accuracy gate (pass + refusal naming
layers), graph surgery, and the ModelOpt path's clean refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streetcascade.errors import BackendUnavailable, CompileError, ConfigError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from streetcascade.calibration.synthetic import write_scene_folder

    return write_scene_folder(tmp_path_factory.mktemp("scenes") / "data", 40, seed=3, size=(160, 120))


@pytest.fixture(scope="module")
def sensitive_dinov3(tmp_path_factory) -> Path:
    """A tiny DINOv3 whose residual branches matter (layerscale 1, not 1e-5), so INT8 moves its output."""
    import torch
    from support import TINY_VIT
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "dinov3-tiny-ls1"
    DINOv3ViTModel(DINOv3ViTConfig(**TINY_VIT, patch_size=16, num_register_tokens=4, layerscale_value=1.0, image_size=224)).save_pretrained(path)
    return path


def _config(tmp_path, source, calibration, name="c.toml", **stage):
    from support import write_config

    stages = [{"name": "stage1", "family": "dinov3", "source": str(source), "precision": "int8-static", "max_batch": 8, **stage}]
    extra = {"calibration": calibration} if calibration is not None else {}
    return write_config(tmp_path / name, stages, tmp_path / "engines", **extra)


def test_int8_static_without_data_is_a_config_error(tmp_path):
    from streetcascade.config import load_config

    with pytest.raises(ConfigError, match="int8-static is gated against FP32 on labelled data"):
        load_config(_config(tmp_path, "random:tiny", None))
    with pytest.raises(ConfigError, match="int8-static is gated"):
        load_config(_config(tmp_path, "random:tiny", {"method": "entropy"}, name="d.toml"))


@pytest.mark.parametrize(
    "calibration, match",
    [
        ({"data": "x", "parquet": ["y.parquet"]}, "not both"),
        ({"data": "x", "method": "kl"}, "method"),
        ({"data": "x", "max_flip_rate": -0.1}, "max_flip_rate"),
        ({"data": "x", "split_fractions": [0.5, 0.5, 0.5]}, "split_fractions"),
        ({"data": "x", "calibration_samples": 0}, "calibration_samples"),
        ({"labels_csv": "l.csv", "parquet": ["p.parquet"]}, "labels_csv"),
        ({"data": "x", "bogus": 1}, "bogus"),
    ],
)
def test_bad_calibration_tables(tmp_path, calibration, match):
    from streetcascade.config import load_config

    with pytest.raises(ConfigError, match=match):
        load_config(_config(tmp_path, "random:tiny", calibration))


def test_missing_data_folder_fails_compile_cleanly(tmp_path):
    from streetcascade.compile.pipeline import compile_cascade

    cfg = _config(tmp_path, "random:tiny", {"data": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="does not exist"):
        compile_cascade(cfg, progress=False)
    assert not (tmp_path / "engines" / "cpu-x86_64").exists()


def test_static_int8_passes_gate_and_records_it(tmp_path, scenes, sensitive_dinov3):
    import onnx
    from streetcascade.runtime import load_engine_set

    from streetcascade.manifest import read_manifest

    cal = {"data": str(scenes), "calibration_samples": 16, "validation_samples": 40, "max_flip_rate": 0.1,
           "max_mcc_drop": 0.2, "max_accuracy_drop": 0.2, "max_auc_drop": 0.2, "sensitivity_keep_fp32": 1, "sensitivity_samples": 16}
    from streetcascade.compile.pipeline import compile_cascade

    dest = compile_cascade(_config(tmp_path, sensitive_dinov3, cal), progress=False)
    graph = read_manifest(dest).stages[0].graphs[0]
    gate = graph.accuracy_gate
    assert graph.precision == "int8-static" and gate is not None and gate.passed
    assert gate.n_images > 0 and gate.n_calibration > 0 and gate.method == "minmax"
    assert 0.0 <= gate.flip_rate <= 0.1 and 0 < gate.max_abs_prob_error < 0.2
    assert len(gate.kept_fp32) == 1 and gate.harmful_layers and gate.kept_fp32[0] == gate.harmful_layers[0].name
    ops = {n.op_type for n in onnx.load(str(dest / graph.file)).graph.node}
    assert "MatMulIntegerToFloat" in ops and "QLinearMatMul" not in ops  # the fused U8S8 path
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", graph.file]  # intermediates gone
    with load_engine_set(dest) as es:
        assert es.cascade.classify(np.zeros((224, 224, 3), np.uint8)).stage == "stage1"


def test_impossible_limit_is_refused_naming_layers(tmp_path, scenes, sensitive_dinov3):
    from streetcascade.compile.accuracy_gate import AccuracyGateFailed
    from streetcascade.compile.pipeline import compile_cascade

    cal = {"data": str(scenes), "calibration_samples": 16, "validation_samples": 24, "max_prob_error": 1e-9, "sensitivity_samples": 8}
    cfg = _config(tmp_path, sensitive_dinov3, cal)
    with pytest.raises(AccuracyGateFailed) as info:
        compile_cascade(cfg, progress=False)
    message = str(info.value)
    assert info.value.gate.passed is False and info.value.gate.max_abs_prob_error > 1e-9
    assert "refused by the accuracy gate" in message and "max probability error" in message
    assert "Layers that hurt most" in message and "/MatMul" in message
    engines = tmp_path / "engines"
    assert not (engines / "cpu-x86_64").exists()  # the engine is not written
    report = json.loads((engines / "cpu-x86_64.gate-failed.json").read_text())
    assert report["passed"] is False and report["harmful_layers"][0]["name"] in message
    assert not [p for p in engines.iterdir() if p.name.startswith(".cpu")]  # no leftover build folder


def test_dequantize_nodes_restores_fp32_exactly(tmp_path, sensitive_dinov3):
    """Surgery: un-quantizing every node gives the FP32 graph's outputs."""
    import onnxruntime as ort
    from streetcascade.compile.export import export_graph
    from streetcascade.compile.models import get_family
    from streetcascade.compile.quantize import (
        StaticRecipe,
        dequantize_nodes,
        quantize_static_qdq,
        select_nodes,
    )

    from streetcascade.config import StageConfig

    model = get_family("dinov3").load(StageConfig(name="s", family="dinov3", source=str(sensitive_dinov3)), tmp_path / "x.toml")
    raw = export_graph(model.graphs[0], tmp_path / "raw.onnx")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 224, 224, 3), dtype=np.uint8)
    result = quantize_static_qdq(raw, tmp_path / "q.onnx", images, StaticRecipe())
    import onnx

    chosen, skipped = select_nodes(onnx.load(str(raw)), StaticRecipe())
    assert result.quantized == chosen and any("patch" in n or "Conv" in n for n in skipped)
    back = dequantize_nodes(result.path, raw, result.quantized)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in back.graph.node)

    def run(m):
        s = ort.InferenceSession(m if isinstance(m, (str, bytes)) else m.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, {"pixels": images})[0]

    np.testing.assert_allclose(run(back), run(str(raw)), atol=1e-5)
    with pytest.raises(CompileError, match="not in the graph"):
        dequantize_nodes(result.path, raw, ["no-such-node"])


def test_quantize_rejects_bad_input(tmp_path):
    from streetcascade.compile.quantize import StaticRecipe, quantize_static_qdq

    with pytest.raises(CompileError, match="method"):
        quantize_static_qdq(tmp_path / "x.onnx", tmp_path / "y.onnx", np.zeros((1, 8, 8, 3), np.uint8), StaticRecipe(method="kl"))
    with pytest.raises(CompileError, match="uint8 NHWC"):
        quantize_static_qdq(tmp_path / "x.onnx", tmp_path / "y.onnx", np.zeros((0, 8, 8, 3), np.uint8))


def test_modelopt_path_refuses_cleanly_without_modelopt(tmp_path, monkeypatch):
    import sys

    from streetcascade.compile.quantize import modelopt_qdq

    monkeypatch.setitem(sys.modules, "modelopt", None)
    monkeypatch.setitem(sys.modules, "modelopt.onnx", None)
    monkeypatch.setitem(sys.modules, "modelopt.onnx.quantization", None)
    with pytest.raises(BackendUnavailable, match="ModelOpt is not installed"):
        modelopt_qdq(tmp_path / "raw.onnx", tmp_path / "q.onnx", np.zeros((1, 224, 224, 3), np.uint8), mode="fp8")
    with pytest.raises(CompileError, match="mode"):
        modelopt_qdq(tmp_path / "raw.onnx", tmp_path / "q.onnx", np.zeros((1, 224, 224, 3), np.uint8), mode="int4")


def test_quant_bench_tiny_runs_side_by_side(capsys):
    from bench.quant import run_quant_bench

    import importlib.util

    from streetcascade.machine import cpu_features

    rows = run_quant_bench(["tiny"], runs=2, rounds=1, warmup=1, n_per_class=12, limits=True)
    variants = {r["variant"] for r in rows}
    # --limits: each variant's GOP/s held against its precision's GEMM limit timed in the same rounds.
    by = {r["variant"]: r for r in rows}
    assert by["ort-int8-dynamic"]["limit_of"] in ("ort-u8s8", "ov-u8s8") and by["ort-fp32"]["limit_of"] in ("ort-fp32", "torch-fp32", "ov-f32")
    assert all(r["of_limit"] > 0 and r["gops"] > 0 for r in rows)
    expected = {"torch-eager", "ort-fp32", "ort-int8-dynamic", "ort-int8-static"}
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):  # the OpenVINO rows come along when installed
        expected |= {"ov-fp32", "ov-int8"} | ({"ov-bf16"} if {"avx512_bf16", "amx_bf16"} & set(cpu_features()) else set())
        ov32 = next(r for r in rows if r["variant"] == "ov-fp32")
        assert ov32["n_flips"] == 0 and ov32["max_dp"] < 1e-4
    assert variants == expected
    static = next(r for r in rows if r["variant"] == "ort-int8-static")
    assert "MatMulIntegerToFloat" in static["ops"] and 0.0 <= static["flips"] <= 1.0
    out = capsys.readouterr().out
    assert "| ort-int8-static |" in out.replace("DINOv3 tiny (test size) ", "") and "of the int8 limit (" in out
