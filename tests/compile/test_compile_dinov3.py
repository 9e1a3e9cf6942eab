"""Compile a tiny DINOv3 checkpoint (saved from a real config, loaded back from disk) and
check the engine set end to end: parity, manifest, loading, refusal of damaged sets."""

import json

import numpy as np
import onnx
import pytest
from streetcascade.runtime import decode_image, load_engine_set, sigmoid
from streetcascade.runtime.images import resize_to

from streetcascade.errors import BudgetExceeded, CompileError, EngineMismatch
from streetcascade.manifest import read_manifest
from streetcascade.settings import RuntimeConfig


def test_manifest_records_parity_target_and_hashes(tiny_engine_dir, tiny_dinov3_dir):
    manifest = read_manifest(tiny_engine_dir)
    stage = manifest.stages[0]
    graph = stage.graphs[0]
    assert stage.family == "dinov3" and stage.source == str(tiny_dinov3_dir)
    assert len(stage.source_sha256) == 64 and len(graph.sha256) == 64
    assert graph.parity.max_abs_prob_error < 1e-4 and graph.parity.n_images >= 10
    assert graph.parity.decision_flips == 0.0
    assert graph.io.inputs[0].dtype == "uint8" and graph.io.inputs[0].shape == ["batch", 224, 224, 3] and graph.io.max_batch == 4
    assert manifest.target.backend == "onnxruntime" and manifest.target.device == "cpu"
    assert {"onnxruntime", "torch", "transformers"} <= set(manifest.library_versions)
    assert manifest.build_seconds > 0 and stage.kind == "classifier" and graph.role == "classifier"
    # The memory account, measured by the backend: weights at least the graph file (inline weights).
    assert graph.memory.device == "cpu" and graph.memory.method == "rss-peak"
    assert graph.memory.weights_bytes >= graph.size_bytes and graph.memory.host_buffers_bytes == 4 * 4
    assert any("input: uint8 NHWC RGB" in n and "0.485" in n for n in stage.notes)  # the declared preprocessing
    # A head-less stage is a placeholder even on a real backbone: it must say so.
    assert stage.placeholder_weights and any("head" in n for n in stage.notes)


def test_graph_has_no_control_flow_and_takes_uint8(tiny_engine_dir):
    graph = read_manifest(tiny_engine_dir).stages[0].graphs[0]
    model = onnx.load(str(tiny_engine_dir / graph.file))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"If", "Loop", "Scan"}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_engine_matches_pytorch_reference_on_samples(tiny_engine_dir, tiny_config, sample_bytes):
    """Independent re-check of the gate: runtime output vs the HF model run by hand."""
    import torch
    from streetcascade.compile.models.base import Normalization, numpy_preprocess
    from streetcascade.compile.models.dinov3 import pooled_features
    from streetcascade.compile.models.head import random_head
    from streetcascade.runtime.images import resize_to
    from transformers import DINOv3ViTModel

    manifest = read_manifest(tiny_engine_dir)
    backbone = DINOv3ViTModel.from_pretrained(manifest.stages[0].source).eval()
    head = random_head(2 * backbone.config.hidden_size, 0)
    images = np.stack([resize_to(decode_image(b), 224) for b in sample_bytes.values()])
    with torch.no_grad():
        hidden = backbone(pixel_values=torch.from_numpy(numpy_preprocess(images, Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1 / 255)))).last_hidden_state
        want = torch.sigmoid(head(pooled_features(hidden, 4))).numpy()
    with load_engine_set(tiny_engine_dir) as es:
        got = es.cascade.stages[0].score(list(images))
    assert np.abs(got - want).max() < 1e-4


def test_load_and_classify(tiny_engine_dir, sample_bytes):
    """A decision is the engine's own logit through the stage's temperature, for every sample."""
    with load_engine_set(tiny_engine_dir) as es:
        stage = es.cascade.stages[0]
        with es.engines[0].slot() as slot:
            for data in sample_bytes.values():
                rgb = decode_image(data)
                d = es.cascade.classify(rgb)
                logit = slot.infer({"pixels": resize_to(rgb, 224)[None]})["logit"][0]
                assert d.stage == "stage1" and d.probability == pytest.approx(float(sigmoid(logit / stage.thresholds.temperature)), abs=1e-7)
                assert d.label == int(d.probability > 0.5)


def test_tampered_engine_file_is_refused(engine_copy):
    graph = read_manifest(engine_copy).stages[0].graphs[0]
    path = engine_copy / graph.file
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineMismatch, match="sha256"):
        load_engine_set(engine_copy)


def test_missing_engine_file_is_refused(engine_copy):
    graph = read_manifest(engine_copy).stages[0].graphs[0]
    (engine_copy / graph.file).unlink()
    with pytest.raises(EngineMismatch, match="missing"):
        load_engine_set(engine_copy)


def _edit_manifest(engine_dir, edit):
    path = engine_dir / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_cpu_feature_mismatch_is_refused(engine_copy):
    _edit_manifest(engine_copy, lambda d: d["target"]["cpu_features"].append("amx_bf16_imaginary"))
    with pytest.raises(EngineMismatch, match="amx_bf16_imaginary"):
        load_engine_set(engine_copy)


def test_arch_and_version_mismatch_are_refused(engine_copy):
    _edit_manifest(engine_copy, lambda d: d["library_versions"].update(onnxruntime="0.1.0"))
    with pytest.raises(EngineMismatch, match="onnxruntime 0.1.0"):
        load_engine_set(engine_copy)
    _edit_manifest(engine_copy, lambda d: d["target"].update(arch="riscv64"))
    with pytest.raises(EngineMismatch, match="riscv64"):
        load_engine_set(engine_copy)


def test_unknown_manifest_field_is_refused(engine_copy):
    _edit_manifest(engine_copy, lambda d: d.update(surprise=1))
    with pytest.raises(EngineMismatch, match="surprise"):
        load_engine_set(engine_copy)


def test_wrong_file_in_place_of_engine_is_refused(engine_copy):
    graph = read_manifest(engine_copy).stages[0].graphs[0]
    (engine_copy / graph.file).write_bytes(b"not an onnx graph")
    _edit_manifest(engine_copy, lambda d: d["stages"][0]["graphs"][0].update(
        sha256=__import__("hashlib").sha256(b"not an onnx graph").hexdigest()))
    with pytest.raises(EngineMismatch, match="cannot load"):
        load_engine_set(engine_copy)


def test_budget_that_cannot_fit_is_refused_before_loading(tiny_engine_dir, monkeypatch):
    from streetcascade.runtime.backends.onnxruntime import OnnxRuntimeBackend

    def no_load(*args):  # pragma: no cover - reaching it is the failure
        raise AssertionError("an engine was loaded before the budget check")

    monkeypatch.setattr(OnnxRuntimeBackend, "load", no_load)
    with pytest.raises(BudgetExceeded, match=r"(?s)does not fit:\n.*stage1/classifier .*for 1 slot\(s\).*budget 0\.00 MiB: DOES NOT FIT"):
        load_engine_set(tiny_engine_dir, RuntimeConfig(budget_bytes=1024))


def test_budget_counts_host_buffers_per_slot(tiny_engine_dir):
    from streetcascade.runtime.plan import plan_memory

    manifest = read_manifest(tiny_engine_dir)
    memory = manifest.stages[0].graphs[0].memory
    one, four = plan_memory(manifest, RuntimeConfig(slots=1)), plan_memory(manifest, RuntimeConfig(slots=4))
    assert one.total_bytes == memory.weights_bytes + memory.activations_bytes + memory.host_buffers_bytes
    assert four.total_bytes - one.total_bytes == 3 * memory.host_buffers_bytes
    exact = RuntimeConfig(budget_bytes=one.total_bytes)
    load_engine_set(tiny_engine_dir, exact).close()  # fits exactly
    with pytest.raises(BudgetExceeded, match="for 4 slot"):
        load_engine_set(tiny_engine_dir, RuntimeConfig(budget_bytes=one.total_bytes, slots=4))


def test_not_an_engine_dir(tmp_path):
    with pytest.raises(EngineMismatch, match="no manifest.json"):
        load_engine_set(tmp_path)


def test_failed_compile_keeps_existing_engine_set(tmp_path, tiny_dinov3_dir):
    from streetcascade.compile.pipeline import compile_cascade
    from support import write_config

    engines = tmp_path / "engines"
    good = write_config(tmp_path / "good.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir)}], engines)
    dest = compile_cascade(good, progress=False)
    before = (dest / "manifest.json").read_bytes()
    # An impossible tolerance makes the parity gate fail after export and build.
    bad = write_config(tmp_path / "bad.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "parity_tolerance": 1e-30}], engines)
    with pytest.raises(CompileError, match="tolerance"):
        compile_cascade(bad, progress=False)
    assert (dest / "manifest.json").read_bytes() == before
    assert [p.name for p in engines.iterdir()] == [dest.name]  # no half-built leftovers
    load_engine_set(dest).close()


def test_missing_checkpoint_dir(tmp_path):
    from streetcascade.compile.pipeline import compile_cascade
    from support import write_config

    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": "./no/such/dir"}], tmp_path / "e")
    with pytest.raises(CompileError, match="no such directory"):
        compile_cascade(cfg, progress=False)


def test_corrupt_checkpoint_weights(tmp_path, tiny_dinov3_dir):
    import shutil

    from streetcascade.compile.pipeline import compile_cascade
    from support import write_config

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dinov3_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(broken)}], tmp_path / "e")
    with pytest.raises(CompileError, match="cannot load weights"):
        compile_cascade(cfg, progress=False)


def test_wrong_model_type_for_family(tmp_path, tiny_vit_dir):
    from streetcascade.compile.pipeline import compile_cascade
    from support import write_config

    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_vit_dir)}], tmp_path / "e")
    with pytest.raises(CompileError, match="dinov3_vit, dinov3_convnext"):
        compile_cascade(cfg, progress=False)


def test_hub_id_without_network_is_a_clear_error(tmp_path, monkeypatch):
    from streetcascade.compile.pipeline import compile_cascade
    from support import write_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": "facebook/dinov3-vits16-pretrain-lvd1689m"}], tmp_path / "e")
    with pytest.raises(CompileError, match="Hugging Face hub"):
        compile_cascade(cfg, progress=False)


def test_int8_dynamic_engine_agrees_with_fp32(tmp_path, tiny_dinov3_dir):
    from streetcascade.compile.pipeline import compile_cascade
    from support import write_config

    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "precision": "int8-dynamic"}], tmp_path / "e")
    dest = compile_cascade(cfg, progress=False)
    graph = read_manifest(dest).stages[0].graphs[0]
    assert graph.precision == "int8-dynamic" and graph.file.endswith("int8-dynamic.onnx")
    assert graph.parity.max_abs_prob_error <= graph.parity.tolerance
    ops = {n.op_type for n in onnx.load(str(dest / graph.file)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}, ops


def test_convnext_variant_from_checkpoint_dir(tmp_path):
    """DINOv3's ConvNeXt backbones load through the same family (no rotary tables)."""
    import torch
    from streetcascade.compile.pipeline import compile_cascade
    from support import write_config
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

    torch.manual_seed(0)
    ckpt = tmp_path / "convnext"
    DINOv3ConvNextModel(DINOv3ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])).save_pretrained(ckpt)
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(ckpt)}], tmp_path / "e")
    stage = read_manifest(compile_cascade(cfg, progress=False)).stages[0]
    assert stage.graphs[0].parity.max_abs_prob_error < 1e-4


def test_garbage_manifest_is_engine_mismatch(engine_copy):
    (engine_copy / "manifest.json").write_text("{ this is not json")
    with pytest.raises(EngineMismatch, match="not valid JSON"):
        load_engine_set(engine_copy)


def test_manifest_of_an_older_format_asks_for_a_recompile(engine_copy):
    _edit_manifest(engine_copy, lambda d: d.update(format_version=1))
    with pytest.raises(EngineMismatch, match="format_version 1, this streetcascade reads 2; recompile"):
        load_engine_set(engine_copy)


@pytest.mark.parametrize("spin, want", [(True, "1"), (False, "0")])
def test_spin_wait_reaches_the_session(tiny_engine_dir, spin, want):
    with load_engine_set(tiny_engine_dir, RuntimeConfig(spin_wait=spin)) as es:
        options = es.engines[0].session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == want
        assert options.graph_optimization_level.name == "ORT_DISABLE_ALL"  # optimised offline already


def test_stage_kind_this_runtime_cannot_run_is_refused(engine_copy):
    _edit_manifest(engine_copy, lambda d: d["stages"][0].update(kind="vlm-judge"))
    with pytest.raises(EngineMismatch, match="unknown stage kind .*'vlm-judge'; known: classifier"):
        load_engine_set(engine_copy)
