"""`precision = "int4"` through `streetcascade compile`: the onnxruntime and openvino targets,
round to nearest or an AutoAWQ checkpoint's own codes, the manifest's record, the memory account,
and the engine loaded and checked by the real runtime code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from awq_writer import write_awq_checkpoint
from support import write_config

from streetcascade.compile.pipeline import compile_cascade
from streetcascade.errors import CompileError
from streetcascade.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("private_cache")  # AWQ checkpoints' dequantized float copies

VIT_LINEARS = 2 * 6  # per block: query, key, value, attention output, intermediate, output


def _compile(tmp_path: Path, stage: dict, backend: str = "onnxruntime", name: str = "c") -> Path:
    cfg = write_config(tmp_path / f"{name}.toml", [{"name": "s", "max_batch": 2, **stage}], tmp_path / f"engines-{name}",
                       target={"backend": backend, "device": "cpu"})
    return compile_cascade(cfg, progress=False)


@pytest.fixture(scope="module")
def awq_vit(tmp_path_factory, tiny_vit_dir) -> Path:
    """The tiny ViT classifier as an AutoAWQ GEMM checkpoint (group 32) of random ints; its
    classifier head stays float, as AutoAWQ leaves heads."""
    out = tmp_path_factory.mktemp("awq") / "vit-awq"
    write_awq_checkpoint(tiny_vit_dir, out, group=32, inside=".layer.", skip=("classifier",))
    return out


def test_rtn_int4_stage_on_onnxruntime(tmp_path, tiny_dinov3_dir, tiny_engine_dir):
    from streetcascade.runtime import load_engine_set

    out = _compile(tmp_path, {"family": "dinov3", "source": str(tiny_dinov3_dir), "precision": "int4",
                              "int4": {"block_size": 32, "keep_float": ["*head*"]}})
    graph = read_manifest(out).stages[0].graphs[0]
    wq = graph.weight_quant
    assert graph.precision == "int4" and wq is not None
    assert (wq.method, wq.block_size, wq.symmetric, wq.accuracy_level, wq.awq_layers) == ("rtn", 32, True, 4, 0)
    assert wq.converted == 12 and wq.kept_float and all("head" in n for n in wq.kept_float)
    assert wq.bytes_before / wq.bytes_after > 5
    # the memory account is measured on the smaller engine
    fp32 = read_manifest(tiny_engine_dir).stages[0].graphs[0]
    assert graph.memory.weights_bytes < fp32.memory.weights_bytes and graph.size_bytes < fp32.size_bytes
    assert graph.parity.max_abs_prob_error <= graph.parity.tolerance == 0.15
    images = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    with load_engine_set(out) as es:  # the real runtime path loads and runs it
        probs = es.cascade.stages[0].score(list(images))
    assert probs.shape == (3,) and np.all((probs >= 0) & (probs <= 1))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_awq_checkpoint_compiles_with_its_own_codes(tmp_path, awq_vit, backend):
    """The AWQ checkpoint loads as its dequantized float model (the parity reference) and the
    engine holds the checkpoint's codes: with float activations (accuracy_level 0) the engine
    matches that reference like an FP32 engine does."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    out = _compile(tmp_path, {"family": "hf-classifier", "source": str(awq_vit), "precision": "int4", "parity_tolerance": 1e-4,
                              "max_batch": 1 if backend == "openvino" else 2, "int4": {"accuracy_level": 0}}, backend=backend)
    stage = read_manifest(out).stages[0]
    wq = stage.graphs[0].weight_quant
    assert (wq.method, wq.awq_layers, wq.converted, wq.symmetric, wq.block_size, wq.accuracy_level) == ("awq", VIT_LINEARS, VIT_LINEARS, False, 32, 0)
    assert len(wq.kept_float) == 1  # the classifier head: AutoAWQ leaves it float
    assert stage.graphs[0].parity.max_abs_prob_error < 1e-4
    assert any(f"all {VIT_LINEARS} AutoAWQ layers imported" in n for n in stage.notes)
    assert stage.placeholder_weights is False


def test_awq_rest_rtn_quantizes_the_head_too(tmp_path, awq_vit):
    out = _compile(tmp_path, {"family": "hf-classifier", "source": str(awq_vit), "precision": "int4",
                              "int4": {"awq_rest": "rtn", "block_size": 16, "symmetric": False}})
    wq = read_manifest(out).stages[0].graphs[0].weight_quant
    assert (wq.method, wq.awq_layers, wq.converted, wq.kept_float) == ("awq+rtn", VIT_LINEARS, VIT_LINEARS + 1, [])


def test_awq_stage_whose_graphs_hold_no_layer_is_refused(tmp_path, awq_vit, monkeypatch):
    """Each graph may lack AWQ layers (a VLM's vision tower), but a stage none of whose graphs
    holds any of them was not exported from that checkpoint."""
    from streetcascade.compile import int4
    from streetcascade.config import StageConfig

    stage = StageConfig(name="judge", family="hf-classifier", source=str(awq_vit), precision="int4")
    with pytest.raises(CompileError, match=r"judge: none of the 12 layers of the AutoAWQ checkpoint .* vit\.encoder\.layer\.0"):
        int4.check_awq_stage(stage, tmp_path / "c.toml", set())
    notes = int4.check_awq_stage(stage, tmp_path / "c.toml", {"vit.encoder.layer.0.attention.attention.query"})
    assert notes and notes[0].startswith("int4: 11 of 12 AutoAWQ layers are in no graph")
    assert int4.check_awq_stage(StageConfig(name="s", family="hf-classifier", source=str(awq_vit)), tmp_path / "c.toml", set()) == []


def test_rtn_int4_stage_on_openvino(tmp_path, tiny_dinov3_dir):
    pytest.importorskip("nncf")
    from streetcascade.runtime.backends.openvino import DYNAMIC_QUANT_KEY, core

    out = _compile(tmp_path, {"family": "dinov3", "source": str(tiny_dinov3_dir), "precision": "int4", "int4": {"symmetric": False, "block_size": 64}},
                   backend="openvino")
    graph = read_manifest(out).stages[0].graphs[0]
    wq = graph.weight_quant
    assert (wq.method, wq.symmetric, wq.block_size) == ("rtn", False, 64) and wq.converted == 13 and wq.bytes_before / wq.bytes_after > 3
    ir = core().read_model(str(out / graph.file))
    assert any(op.get_output_element_type(0).get_type_name() == "u4" for op in ir.get_ops() if op.get_type_name() == "Constant")
    assert not ir.has_rt_info(DYNAMIC_QUANT_KEY)  # accuracy_level 4: the plugin's int8 activations are allowed


def test_int4_on_the_tensorrt_target_is_refused(tmp_path, tiny_dinov3_dir):
    from streetcascade.compile.targets import get_target
    from streetcascade.config import StageConfig

    stage = StageConfig(name="s", family="dinov3", source=str(tiny_dinov3_dir), precision="int4")
    with pytest.raises(CompileError, match="precision 'int4' is not available for the tensorrt target"):
        get_target("tensorrt").check_precision(stage, "cuda")
    get_target("onnxruntime").check_precision(stage, "cuda")
    get_target("onnxruntime").check_precision(stage, "cpu")


@pytest.mark.parametrize("table, match", [
    ({"block_size": 48}, r"block_size 48: use a power of two from 16 to 256 .* at `\$\.stages\[0\]\.int4`"),
    ({"bits": 3}, r"Invalid enum value 3 - at `\$\.stages\[0\]\.int4\.bits`"),
    ({"accuracy_level": 5}, r"at `\$\.stages\[0\]\.int4\.accuracy_level`"),
    ({"awq_rest": "int8"}, r"at `\$\.stages\[0\]\.int4\.awq_rest`"),
    ({"group_size": 128}, r"unknown field `group_size` - at `\$\.stages\[0\]\.int4`"),
])
def test_bad_int4_table_is_a_config_error(tmp_path, table, match):
    from streetcascade.config import load_config
    from streetcascade.errors import ConfigError

    cfg = write_config(tmp_path / "c.toml", [{"name": "s", "family": "dinov3", "source": "random:vits16", "precision": "int4", "int4": table}], tmp_path / "e")
    with pytest.raises(ConfigError, match=match):
        load_config(cfg)


def test_int4_table_without_int4_precision_is_a_config_error(tmp_path):
    from streetcascade.config import load_config
    from streetcascade.errors import ConfigError

    cfg = write_config(tmp_path / "c.toml", [{"name": "s", "family": "dinov3", "source": "random:vits16", "int4": {"block_size": 32}}], tmp_path / "e")
    with pytest.raises(ConfigError, match=r"an int4 table is set but precision is 'fp32'"):
        load_config(cfg)


def test_info_shows_the_4bit_weights(tmp_path, tiny_dinov3_dir, capsys):
    from streetcascade.cli import main

    out = _compile(tmp_path, {"family": "dinov3", "source": str(tiny_dinov3_dir), "precision": "int4"})
    assert main(["info", "--engines", str(out)]) == 0
    text = capsys.readouterr().out
    assert "weights   13 MatMul(s) to 4-bit (rtn, block 128, symmetric, accuracy_level 4)" in text
