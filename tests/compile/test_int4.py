"""4-bit weights (compile/int4.py) on a tiny random Qwen2 causal LM exported to ONNX: ONNX
Runtime's round-to-nearest MatMulNBits, and AutoAWQ checkpoints (written here in AutoAWQ's
packed layout) imported without re-quantizing."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from awq_writer import pack_gemm, pack_gemv, random_layer, write_awq_checkpoint
from tiny_lm import cosine_rows, export_last_logits, lm_feeds, ort_run, torch_logits, write_tiny_qwen2

from streetcascade.compile import int4
from streetcascade.errors import CompileError

onnx = pytest.importorskip("onnx")

# Random weights are a pessimistic case for 4 bits (no structure, every layer's error adds up):
# measured cosine 0.965-0.978 on this model's last-position logits; real checkpoints do better.
RTN_MIN_COSINE = 0.94
N_LINEAR = 2 * 7  # q, k, v, o, gate, up, down per layer


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("int4")
    model_dir = write_tiny_qwen2(root / "qwen2")
    graph = export_last_logits(model_dir, root / "qwen2.onnx")
    feeds = lm_feeds()
    return {"root": root, "dir": model_dir, "graph": graph, "feeds": feeds, "fp32": ort_run(graph, feeds)}


@pytest.fixture(scope="module")
def awq(lm):
    """An AutoAWQ GEMM checkpoint (group 128) of the tiny model, its float copy, and that copy's export."""
    root = lm["root"]
    layers = write_awq_checkpoint(lm["dir"], root / "awq", group=128)
    float_dir = int4.write_dequantized_checkpoint(root / "awq", root / "awq-float")
    graph = export_last_logits(float_dir, root / "awq-float.onnx")
    return {"dir": root / "awq", "layers": layers, "float_dir": float_dir, "graph": graph}


def test_rtn_runs_close_to_fp32_and_is_over_4x_smaller(lm, tmp_path):
    raw = onnx.load(str(lm["graph"]))
    fp32_bytes = lm["graph"].stat().st_size
    for block in (32, 128):
        q = int4.quantize_matmul_nbits(raw, block_size=block, symmetric=True, accuracy_level=4)
        path = int4.save_model(q, tmp_path / f"b{block}.onnx")
        out = ort_run(path, lm["feeds"])
        cos = cosine_rows(out, lm["fp32"])
        rel = np.abs(out - lm["fp32"]).max() / np.abs(lm["fp32"]).max()
        assert cos.min() > RTN_MIN_COSINE, (block, cos)
        assert rel < 0.35, (block, rel)
        assert fp32_bytes / path.stat().st_size >= 4.0, (block, fp32_bytes, path.stat().st_size)
        report = int4.int4_report(q)
        assert (report.method, report.block_size, report.symmetric, report.accuracy_level) == ("rtn", block, True, 4)
        assert report.converted == N_LINEAR + 1 and report.kept_float == []  # + the LM head
        assert report.bytes_before == 4 * sum(int(np.prod(t.dims)) for t in raw.graph.initializer if len(t.dims) == 2) - 4 * 256 * 256  # all but the embedding
        assert report.bytes_before / report.bytes_after > 6
    # the input model is untouched (not inplace)
    assert not int4.nbits_nodes(raw)


def test_rtn_asymmetric_and_keep_float_head(lm, tmp_path):
    raw = onnx.load(str(lm["graph"]))
    q = int4.quantize_matmul_nbits(raw, block_size=64, symmetric=False, accuracy_level=0, keep_float=int4.keep_float_names(["*lm_head*"]))
    report = int4.int4_report(q)
    assert report.converted == N_LINEAR and not report.symmetric and report.accuracy_level == 0
    assert report.kept_float == ["/lm/lm_head/MatMul"]
    assert cosine_rows(ort_run(q, lm["feeds"]), lm["fp32"]).min() > RTN_MIN_COSINE
    # MatMulNBits' own dequantization (as read back here) is what ONNX Runtime multiplies with
    node = int4.nbits_nodes(q)[0]
    w = int4.dequantize_matmul_nbits(q, node)
    assert w.shape == (int(node.attribute[[a.name for a in node.attribute].index("N")].i), 256)


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_size=48), "block_size 48"),
    (dict(block_size=8), "block_size 8"),
    (dict(block_size=512), "block_size 512"),
    (dict(bits=3), "bits 3"),
    (dict(accuracy_level=5), "accuracy_level 5"),
])
def test_bad_settings_are_refused(lm, kwargs, match):
    with pytest.raises(CompileError, match=match):
        int4.quantize_matmul_nbits(onnx.load(str(lm["graph"])), **kwargs)


def test_graph_without_constant_matmul_is_refused():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    with pytest.raises(CompileError, match="no MatMul with a constant float weight"):
        int4.quantize_matmul_nbits(helper.make_model(graph))


# ----------------------------------------------------------------------------------------- AWQ


def test_awq_reader_inverts_autoawq_packing(awq):
    layers = int4.read_awq_checkpoint(awq["dir"])
    assert sorted(layers) == sorted(awq["layers"]) and len(layers) == N_LINEAR
    for name, layer in layers.items():
        ref = awq["layers"][name]
        assert (layer.out_features, layer.in_features, layer.group_size, layer.layout) == (*ref.codes.shape, 128, "gemm")
        np.testing.assert_array_equal(layer.codes(), ref.codes)
        np.testing.assert_array_equal(layer.zeros(), ref.zeros)
        np.testing.assert_array_equal(layer.dequantize(), ref.dequantized())


@pytest.mark.parametrize("group", [32, 64, 128, -1])
def test_awq_gemv_layout_reads_like_gemm(group, tmp_path):
    rng = np.random.default_rng(3)
    ref = random_layer(rng, 64, 256, 256 if group == -1 else group)
    gemm, gemv = pack_gemm(ref), pack_gemv(ref)
    g = 256 if group == -1 else group
    a = int4.AwqLinear("x", gemm["qweight"], gemm["qzeros"], gemm["scales"], g, "gemm", 256, 64)
    b = int4.AwqLinear("x", gemv["qweight"], gemv["qzeros"], gemv["scales"], g, "gemv", 256, 64)
    np.testing.assert_array_equal(a.dequantize(), ref.dequantized())
    np.testing.assert_array_equal(b.dequantize(), ref.dequantized())


def test_awq_import_matches_the_dequantized_float_model(awq, lm, tmp_path):
    layers = int4.read_awq_checkpoint(awq["dir"])
    float_graph = onnx.load(str(awq["graph"]))
    feeds = lm["feeds"]
    reference = torch_logits(awq["float_dir"], feeds)  # transformers, float32, weights from dequantized_state_dict
    imported = int4.import_awq(float_graph, layers, accuracy_level=0)
    out = ort_run(int4.save_model(imported, tmp_path / "awq.onnx"), feeds)
    scale = np.abs(reference).max()
    assert np.abs(out - reference).max() <= 1e-4 * scale, np.abs(out - reference).max() / scale
    report = int4.int4_report(imported)
    assert (report.method, report.awq_layers, report.converted, report.block_size, report.symmetric) == ("awq", N_LINEAR, N_LINEAR, 128, False)
    assert report.kept_float == ["/lm/lm_head/MatMul"]  # AutoAWQ leaves the head float; so does the import
    assert int4.awq_unmatched(imported) == []
    # every MatMulNBits holds exactly one AWQ layer's dequantized weight
    by_weight = {layer.dequantize().tobytes(): name for name, layer in layers.items()}
    found = set()
    for node in int4.nbits_nodes(imported):
        w = int4.dequantize_matmul_nbits(imported, node)
        assert w.tobytes() in by_weight, node.name
        found.add(by_weight[w.tobytes()])
    assert found == set(layers)
    # the int8-activation kernel (accuracy_level 4) stays close
    fast = ort_run(int4.import_awq(float_graph, layers, accuracy_level=4), feeds)
    assert cosine_rows(fast, reference).min() > 0.999


def test_awq_import_then_rtn_for_the_rest(awq, lm):
    layers = int4.read_awq_checkpoint(awq["dir"])
    model = int4.import_awq(onnx.load(str(awq["graph"])), layers, accuracy_level=0)
    model = int4.quantize_matmul_nbits(model, block_size=32, accuracy_level=0, inplace=True)
    report = int4.int4_report(model)
    assert (report.method, report.converted, report.awq_layers, report.kept_float) == ("awq+rtn", N_LINEAR + 1, N_LINEAR, [])
    reference = torch_logits(awq["float_dir"], lm["feeds"])
    assert cosine_rows(ort_run(model, lm["feeds"]), reference).min() > RTN_MIN_COSINE


def test_awq_dequantized_state_dict_passes_other_tensors_through(awq):
    from safetensors.numpy import load_file

    state = int4.dequantized_state_dict(awq["dir"])
    stored = load_file(str(awq["dir"] / "model.safetensors"))
    assert not any(k.endswith((".qweight", ".qzeros", ".scales")) for k in state)
    np.testing.assert_array_equal(state["model.embed_tokens.weight"], stored["model.embed_tokens.weight"].astype(np.float32))
    np.testing.assert_array_equal(state["model.layers.0.self_attn.q_proj.bias"], stored["model.layers.0.self_attn.q_proj.bias"].astype(np.float32))
    assert state["model.layers.1.mlp.down_proj.weight"].dtype == np.float32
    cfg = json.loads((awq["float_dir"] / "config.json").read_text())
    assert "quantization_config" not in cfg


def test_awq_checkpoint_of_another_model_is_refused(awq, lm, tmp_path):
    other = tmp_path / "other"
    write_awq_checkpoint(lm["dir"], other, seed=7)  # same shapes, other ints
    with pytest.raises(CompileError, match=r"none of the 14 AWQ layers matched.*model\.layers\.0\.self_attn\.q_proj"):
        int4.import_awq(onnx.load(str(awq["graph"])), int4.read_awq_checkpoint(other))


def test_awq_layers_missing_from_the_graph_are_reported(awq, caplog):
    layers = dict(int4.read_awq_checkpoint(awq["dir"]))
    extra = random_layer(np.random.default_rng(5), 64, 256, 128)
    packed = pack_gemm(extra)
    layers["visual.blocks.0.mlp.fc1"] = int4.AwqLinear("visual.blocks.0.mlp.fc1", packed["qweight"], packed["qzeros"], packed["scales"], 128, "gemm", 256, 64)
    # Straight onto the module's logger, enabled: an earlier test's logging setup (a CLI run, a
    # library's dictConfig) may have stopped propagation above it or disabled it.
    logger = logging.getLogger(int4.__name__)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger=int4.__name__)
    disabled, logger.disabled = logger.disabled, False
    try:
        model = int4.import_awq(onnx.load(str(awq["graph"])), layers, accuracy_level=0)
    finally:
        logger.removeHandler(caplog.handler)
        logger.disabled = disabled
    assert int4.awq_unmatched(model) == ["visual.blocks.0.mlp.fc1"]
    assert int4.int4_report(model).awq_layers == N_LINEAR
    assert "visual.blocks.0.mlp.fc1" in caplog.text


@pytest.mark.parametrize("style", ["quant_config.json", "gemv"])
def test_awq_config_styles(lm, tmp_path, style):
    out = tmp_path / "ckpt"
    if style == "gemv":
        layers = write_awq_checkpoint(lm["dir"], out, group=64, version="gemv")
    else:
        layers = write_awq_checkpoint(lm["dir"], out, group=64, config_style="autoawq")
    read = int4.read_awq_checkpoint(out)
    name = "model.layers.1.mlp.up_proj"
    assert read[name].group_size == 64 and read[name].layout == ("gemv" if style == "gemv" else "gemm")
    np.testing.assert_array_equal(read[name].dequantize(), layers[name].dequantized())


def _corrupt(awq_dir: Path, tmp_path: Path, edit) -> Path:
    from safetensors.numpy import load_file, save_file

    dst = tmp_path / "bad"
    shutil.copytree(awq_dir, dst)
    state = load_file(str(dst / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.pop("model.layers.0.mlp.up_proj.qzeros"), r"model\.layers\.0\.mlp\.up_proj: qweight without qzeros"),
    (lambda s: s.pop("model.layers.1.self_attn.o_proj.scales"), r"o_proj: qweight without scales"),
    (lambda s: s.update({"model.layers.0.mlp.down_proj.scales": np.ones((4, 256), np.float16)}), r"down_proj: scales has shape \[4, 256\], expected \[8, 256\]"),
    (lambda s: s.update({"model.layers.0.mlp.down_proj.qweight": np.ones((512, 32), np.int32)}), r"down_proj: qzeros has shape \[8, 32\], expected \[4, 32\]"),
    (lambda s: s.update({"model.layers.0.mlp.down_proj.qzeros": np.ones((8, 32), np.float32)}), r"qzeros is F32, expected I32"),
    (lambda s: [s.pop(k) for k in [k for k in s if k.endswith((".qweight", ".qzeros", ".scales"))]], r"no AWQ layers"),
])
def test_corrupt_awq_checkpoint_is_refused(awq, tmp_path, edit, match):
    with pytest.raises(CompileError, match=match):
        int4.read_awq_checkpoint(_corrupt(awq["dir"], tmp_path, edit))


@pytest.mark.parametrize("change, match", [
    ({"bits": 3}, "AWQ bits 3"),
    ({"version": "marlin"}, "AWQ version 'marlin'"),
    ({"zero_point": False}, "zero_point = false"),
    ({"quant_method": "gptq"}, "not an AutoAWQ checkpoint"),
])
def test_bad_awq_config_is_refused(awq, tmp_path, change, match):
    dst = tmp_path / "cfg"
    shutil.copytree(awq["dir"], dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"].update(change)
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CompileError, match=match):
        int4.read_awq_checkpoint(dst)
    assert int4.is_awq_checkpoint(dst) == ("not an AutoAWQ" not in match)


def test_truncated_safetensors_is_refused(awq, tmp_path):
    dst = tmp_path / "trunc"
    shutil.copytree(awq["dir"], dst)
    f = dst / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CompileError, match="truncated or corrupt|not a readable safetensors"):
        int4.dequantized_state_dict(dst)
    (dst / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CompileError, match="not a readable safetensors"):
        int4.read_awq_checkpoint(dst)


def test_bf16_tensors_are_read_without_torch(tmp_path):
    import torch
    from safetensors.torch import save_file

    values = torch.randn(3, 5).to(torch.bfloat16)
    save_file({"w": values}, str(tmp_path / "x.safetensors"))
    got = int4.SafetensorsFile(tmp_path / "x.safetensors").get("w")
    np.testing.assert_array_equal(got, values.float().numpy())


def test_gemm_and_matmul_add_linears_import_alike(tmp_path):
    """torch.onnx exports Linear on a 2-D input as Gemm(transB=1) with the bias inside, on 3-D as
    MatMul + Add: both become MatMulNBits (+ Add) with the bias kept."""
    import torch

    rng = np.random.default_rng(0)
    l1, l2 = random_layer(rng, 64, 128, 32), random_layer(rng, 32, 64, 32)
    net = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.GELU(), torch.nn.Linear(64, 32)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(l1.dequantized()))
        net[2].weight.copy_(torch.from_numpy(l2.dequantized()))
    layers = {}
    for name, ref in (("0", l1), ("2", l2)):
        p = pack_gemm(ref)
        layers[name] = int4.AwqLinear(name, p["qweight"], p["qzeros"], p["scales"], 32, "gemm", ref.codes.shape[1], ref.codes.shape[0])
    for rank in (2, 3):
        x = torch.randn(*(4, 128) if rank == 2 else (2, 3, 128))
        path = tmp_path / f"mlp{rank}.onnx"
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ("Gemm" in ops) == (rank == 2)
        model = int4.import_awq(onnx.load(str(path)), layers, accuracy_level=0)
        assert {n.op_type for n in model.graph.node} >= {"MatMulNBits", "Add"} and "Gemm" not in {n.op_type for n in model.graph.node}
        with torch.no_grad():
            ref = net(x).numpy()
        got = ort_run(model, {"x": x.numpy()})
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
        rtn = int4.quantize_matmul_nbits(onnx.load(str(path)), block_size=32, accuracy_level=0)
        assert int4.int4_report(rtn).converted == 2


def test_awq_group_not_a_power_of_two_uses_a_dividing_block():
    """Per-channel AWQ (group = in_features = 384 = 3 x 128): MatMulNBits blocks of 128 repeat each
    group's scale and zero point, and dequantize to the same weight."""
    from onnx import TensorProto, helper, numpy_helper

    ref = random_layer(np.random.default_rng(2), 32, 384, 384)
    p = pack_gemm(ref)
    layer = int4.AwqLinear("fc", p["qweight"], p["qzeros"], p["scales"], 384, "gemm", 384, 32)
    w = ref.dequantized()
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "exporter_name"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 384])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
                              [numpy_helper.from_array(np.ascontiguousarray(w.T), "exporter_name")])
    model = int4.import_awq(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"fc": layer}, accuracy_level=0)
    node = int4.nbits_nodes(model)[0]
    assert [a.i for a in node.attribute if a.name == "block_size"] == [128]
    np.testing.assert_array_equal(int4.dequantize_matmul_nbits(model, node), w)
    x = np.random.default_rng(0).standard_normal((1, 384)).astype(np.float32)
    np.testing.assert_allclose(ort_run(model, {"x": x}), x @ w.T, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ accuracy gate


def _decision_logits(path: Path, feeds: list[dict]) -> np.ndarray:
    """A yes/no judge's decision logit from the LM graph: log p(yes) - log p(no) over two tokens."""
    from streetcascade.compile.accuracy_gate import engine_outputs
    from streetcascade.manifest import GraphIO, TensorSpec

    io = GraphIO(inputs=[TensorSpec("input_ids", ["batch", "seq"], "int64"), TensorSpec("attention_mask", ["batch", "seq"], "int64")],
                 outputs=[TensorSpec("logits", ["batch", 256], "float32")], max_batch=4, axis_sizes={"seq": 20})
    logits = engine_outputs(path, io, feeds, "logits", optimize=True)
    return (logits[:, 65] - logits[:, 66]).astype(np.float64)


def test_accuracy_gate_takes_an_int4_engine_against_fp32(awq, lm, tmp_path):
    """The same gate as INT8's: an AWQ import with float activations flips nothing; a lossy
    round-to-nearest engine is refused under tight limits, naming int4."""
    from streetcascade.compile import accuracy_gate as gate
    from streetcascade.config import CalibrationConfig

    feeds = [lm_feeds(batch=4, seed=s) for s in range(8)]
    labels = np.random.default_rng(0).integers(0, 2, 32)
    float_graph = onnx.load(str(awq["graph"]))
    fp32 = _decision_logits(awq["graph"], feeds)
    exact = int4.save_model(int4.import_awq(float_graph, int4.read_awq_checkpoint(awq["dir"]), accuracy_level=0), tmp_path / "awq.onnx")
    g = gate.compare(fp32, _decision_logits(exact, feeds), labels, method="int4-awq", n_calibration=0, limits=CalibrationConfig(),
                     quantized_nodes=N_LINEAR, reference="onnxruntime-fp32")
    assert g.passed and g.flip_rate == 0 and g.max_abs_prob_error < 1e-5
    rtn = int4.save_model(int4.quantize_matmul_nbits(float_graph, block_size=128), tmp_path / "rtn.onnx")
    tight = CalibrationConfig(max_flip_rate=0.0, max_prob_error=1e-3)
    g = gate.compare(fp32, _decision_logits(rtn, feeds), labels, method="int4-rtn-b128", n_calibration=0, limits=tight, quantized_nodes=N_LINEAR + 1)
    violations = gate.check(g)
    assert not g.passed and any("max probability error" in v for v in violations)
    assert "s: int4 engine refused by the accuracy gate" in gate.failure_message("s", g, violations, precision="int4")


def test_dequantized_checkpoint_in_shards_loads_the_same(awq, lm, tmp_path):
    """A large checkpoint is written in shards (bounded memory) with the index transformers reads."""
    out = int4.write_dequantized_checkpoint(awq["dir"], tmp_path / "sharded", shard_bytes=1 << 20)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").exists()
    np.testing.assert_array_equal(torch_logits(out, lm["feeds"]), torch_logits(awq["float_dir"], lm["feeds"]))
