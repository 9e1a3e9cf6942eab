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
