"""Graphs past protobuf's 2 GiB limit (a VLM's language model in FP32): the exporter's one file
per weight collected into `<graph>.data`, ONNX Runtime's offline optimisation writing the
engine's weights beside it, and that file travelling as a hashed companion. Exercised on a small
graph saved the way the exporter saves a large one."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from streetcascade.compile.export import gather_external_data, has_external_data, weights_file
from streetcascade.compile.targets.base import BuiltGraph
from streetcascade.compile.targets.onnxruntime import optimize_offline, with_weights_file
from streetcascade.manifest import GraphIO, TensorSpec


def two_matmuls() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), n) for n in ("w1", "w2"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_weight_files_collected_then_optimised_with_a_companion(tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    raw = tmp_path / "s.prefill.raw.onnx"
    onnx.save_model(two_matmuls(), str(raw), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    written = [p for p in tmp_path.iterdir() if p != raw]
    assert len(written) == 2  # one file per weight, as torch's exporter writes past 2 GiB
    want = run(raw, x)
    gather_external_data(raw, written)
    assert sorted(p.name for p in tmp_path.iterdir()) == [raw.name, weights_file(raw).name]
    assert has_external_data(raw) and np.array_equal(run(raw, x), want)
    out = tmp_path / "s.prefill.fp32.onnx"
    io = GraphIO([TensorSpec("x", ["batch", 64], "float32")], [TensorSpec("y", ["batch", 64], "float32")], 2)
    built = with_weights_file(BuiltGraph(optimize_offline(raw, out, io)))
    assert built.companions == [weights_file(out)] and weights_file(out).stat().st_size >= 2 * 64 * 64 * 4
    assert np.allclose(run(out, x), want, atol=1e-5)
    small = tmp_path / "inline.onnx"
    onnx.save_model(two_matmuls(), str(small))
    assert not has_external_data(small)
    assert with_weights_file(BuiltGraph(optimize_offline(small, tmp_path / "inline.opt.onnx", io))).companions == []


def test_copy_graph_gives_the_engine_its_own_weights_file(tmp_path):
    """A graph past 2 GiB cannot be copied byte for byte into the engine file: its file names the
    source's weights file, an intermediate the compile removes. copy_graph saves it again."""
    from streetcascade.compile.export import copy_graph

    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    raw = tmp_path / "s.prefill.raw.onnx"
    onnx.save_model(two_matmuls(), str(raw), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=weights_file(raw).name, size_threshold=0)
    want = run(raw, x)
    out = tmp_path / "s.prefill.fp32.onnx"
    copy_graph(raw, out)
    weights_file(raw).unlink()  # what the compile does with intermediates
    assert has_external_data(out) and weights_file(out).exists()
    assert with_weights_file(BuiltGraph(out)).companions == [weights_file(out)]
    assert np.array_equal(run(out, x), want)
    small, small_out = tmp_path / "inline.onnx", tmp_path / "inline.copy.onnx"
    onnx.save_model(two_matmuls(), str(small))
    copy_graph(small, small_out)
    assert small_out.read_bytes() == small.read_bytes() and not weights_file(small_out).exists()


def test_int4_for_cuda_keeps_its_weights_beside_the_engine(tmp_path, monkeypatch):
    """The onnxruntime target's int4 graph for the CUDA provider, past the external-data size
    (lowered here so a small graph takes that path): the engine's weights are in
    `weights_file(engine)`, a hashed companion, and no intermediate is needed to run it. (It was
    written as an intermediate and copied byte for byte, so the engine named the intermediate's
    weights file, which the compile then removed.)"""
    from types import SimpleNamespace

    from streetcascade.compile import int4
    from streetcascade.compile.targets.onnxruntime import OnnxRuntimeTarget
    from streetcascade.config import Int4Config, StageConfig, TargetConfig
    from streetcascade.progress import Progress

    monkeypatch.setattr(int4, "EXTERNAL_DATA_BYTES", 0)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    raw = tmp_path / "s.prefill.raw.onnx"
    onnx.save_model(two_matmuls(), str(raw), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=weights_file(raw).name, size_threshold=0)
    want = run(raw, x)
    stage = StageConfig(name="s", family="qwen3-vl", source="random:tiny", precision="int4",
                        int4=Int4Config(block_size=32, accuracy_level=0))
    out = tmp_path / "s.prefill.int4.onnx"
    job = SimpleNamespace(stage=stage, raw=raw, out=out, graph=None, config_path=tmp_path / "c.toml", progress=Progress(enabled=False),
                          config=SimpleNamespace(target=TargetConfig(device="cuda", execution_provider="cuda")))
    built = OnnxRuntimeTarget.build_int4(job)
    for intermediate in tmp_path.glob("*.tmp.onnx*"):
        intermediate.unlink()
    weights_file(raw).unlink()
    assert built.path == out and built.companions == [weights_file(out)]
    ops = {n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops and "MatMul" not in ops
    got = run(out, x)  # 4-bit weights: close to the float graph, not equal
    cosine = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
    assert np.all(cosine > 0.98), cosine
