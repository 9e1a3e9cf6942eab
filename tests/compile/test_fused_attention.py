"""`attention = "fused"`: the ONNX Runtime target exports every scaled_dot_product_attention as
ONNX Runtime's MultiHeadAttention contrib op; same answers as the plain export through the real
loading code, and refused where it cannot apply (other targets, models without SDPA)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streetcascade.errors import CompileError


def _config(tmp_path: Path, source, attention="fused", precision="fp32", backend="onnxruntime", family="dinov3", name="c.toml"):
    from support import write_config

    stage = {"name": "stage1", "family": family, "source": str(source), "precision": precision, "max_batch": 2, "attention": attention}
    return write_config(tmp_path / name, [stage], tmp_path / f"engines-{name}", target={"backend": backend, "device": "cpu"})


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("family", ["dinov3", "hf-classifier"])
def test_fused_export_answers_like_the_plain_one(tmp_path, family, tiny_dinov3_dir, tiny_vit_dir):
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.manifest import read_manifest
    from streetcascade.runtime import load_engine_set

    source = tiny_dinov3_dir if family == "dinov3" else tiny_vit_dir
    fused = compile_cascade(_config(tmp_path, source, family=family), progress=False)
    plain = compile_cascade(_config(tmp_path, source, "plain", family=family, name="p.toml"), progress=False)
    m = read_manifest(fused)
    graph = m.stages[0].graphs[0]
    assert "MultiHeadAttention" in _ops(fused / graph.file) and "MultiHeadAttention" not in _ops(plain / read_manifest(plain).stages[0].graphs[0].file)
    assert graph.parity.max_abs_prob_error < 1e-4 and any("attention fused" in n for n in m.stages[0].notes)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (200, 260, 3), dtype=np.uint8) for _ in range(3)]
    with load_engine_set(fused) as a, load_engine_set(plain) as b:
        pa = [a.cascade.classify(x).probability for x in images]
        pb = [b.cascade.classify(x).probability for x in images]
    np.testing.assert_allclose(pa, pb, atol=1e-5)


@pytest.mark.parametrize("precision", ["int8-dynamic", "int8-static"])
def test_fused_attention_with_int8(tmp_path, tiny_dinov3_dir, precision):
    from support import write_config

    from streetcascade.calibration.synthetic import write_scene_folder
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.manifest import read_manifest

    cfg = _config(tmp_path, tiny_dinov3_dir, precision=precision)
    if precision == "int8-static":  # calibrated and gated on labelled scenes (the contrib op's outputs are typed for the calibrator)
        scenes = write_scene_folder(tmp_path / "scenes", 20, seed=5, size=(160, 120))
        cal = {"data": str(scenes), "calibration_samples": 8, "validation_samples": 16, "max_flip_rate": 1.0, "max_mcc_drop": 2.0,
               "max_accuracy_drop": 1.0, "max_auc_drop": 1.0}
        stage = {"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "precision": precision, "max_batch": 2, "attention": "fused"}
        cfg = write_config(tmp_path / "s.toml", [stage], tmp_path / "engines-s", target={"backend": "onnxruntime", "device": "cpu"}, calibration=cal)
    dest = compile_cascade(cfg, progress=False)
    graph = read_manifest(dest).stages[0].graphs[0]
    ops = _ops(dest / graph.file)
    assert "MultiHeadAttention" in ops and "MatMulIntegerToFloat" in ops and graph.parity.max_abs_prob_error <= graph.parity.tolerance
    assert precision == "int8-dynamic" or graph.accuracy_gate.passed


def test_refused_by_other_targets_and_auto_keeps_onnxruntime(tmp_path, tiny_dinov3_dir):
    pytest.importorskip("openvino")
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.manifest import read_manifest

    with pytest.raises(CompileError, match="MultiHeadAttention contrib op, which the openvino target does not take"):
        compile_cascade(_config(tmp_path, tiny_dinov3_dir, backend="openvino"), progress=False)
    dest = compile_cascade(_config(tmp_path, tiny_dinov3_dir, backend="auto", name="a.toml"), progress=False)
    target = read_manifest(dest).target
    assert target.backend == "onnxruntime" and "does not take" in target.selection.skipped["openvino"]


def test_a_model_without_attention_is_refused(tmp_path):
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    from streetcascade.compile.pipeline import compile_cascade

    torch.manual_seed(0)
    ckpt = tmp_path / "resnet"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2)).save_pretrained(ckpt)
    (ckpt / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255}))
    with pytest.raises(CompileError, match="no scaled_dot_product_attention|no transformer config"):
        compile_cascade(_config(tmp_path, ckpt, family="hf-classifier"), progress=False)
    assert not (tmp_path / "engines-c.toml").exists() or not any((tmp_path / "engines-c.toml").rglob("manifest.json"))


def test_unknown_attention_value_is_a_config_error(tmp_path):
    from streetcascade.config import load_config
    from streetcascade.errors import ConfigError

    with pytest.raises(ConfigError, match="attention"):
        load_config(_config(tmp_path, "random:tiny", attention="flash"))


def test_refused_for_ocr_families():
    """PP-OCR's graphs are ready-made ONNX and Florence-2's attention is masked or causal: the
    option would otherwise be ignored or fail deep in the export."""
    from streetcascade.compile.targets import get_target
    from streetcascade.config import StageConfig

    for family in ("ppocr", "florence2"):
        stage = StageConfig(name="ocr", family=family, source="random:tiny", attention="fused")
        with pytest.raises(CompileError, match=f"applies to classifier families.*{family} is an ocr family"):
            get_target("onnxruntime").check_precision(stage)


@pytest.mark.parametrize("family", ["qwen3-vl", "smolvlm"])
def test_a_vlm_judge_fuses_its_vision_tower_only(tmp_path, tiny_vlm, family):
    """A VLM judge: the vision tower's (unmasked) attention fused, the causal prefill left
    plain; the chain still matches transformers (the compile's end-to-end parity, bar 1e-3)."""
    import onnx

    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.manifest import read_manifest

    ckpt, _ = tiny_vlm(family)
    dest = compile_cascade(_config(tmp_path, ckpt, family=family), progress=False)
    entry = read_manifest(dest).stages[0]
    vision, prefill = (onnx.load(str(dest / g.file), load_external_data=False) for g in entry.graphs)
    assert sum(n.op_type == "MultiHeadAttention" for n in vision.graph.node) == 2 + (family == "qwen3-vl")  # one per vision block
    assert not any(n.op_type == "MultiHeadAttention" for n in prefill.graph.node)
    assert entry.vlm.parity.max_abs_logit_error < 1e-3 and any("of the vision graph is ONNX Runtime's MultiHeadAttention" in n for n in entry.notes)


def test_refused_for_a_judge_without_unmasked_attention():
    """Qwen2.5-VL's vision attention is windowed (a block-diagonal mask): nothing to fuse."""
    from streetcascade.compile.targets import get_target
    from streetcascade.config import StageConfig

    stage = StageConfig(name="judge", family="qwen2.5-vl", source="random:tiny", attention="fused")
    with pytest.raises(CompileError, match="qwen2.5-vl's vision attention is masked"):
        get_target("onnxruntime").check_precision(stage)
