"""A batch must answer exactly like its images one at a time, on the openvino target too.

OpenVINO's ONNX reader (2026.3.0-2026.4.1 at least) ignores the `axes` attribute of
ReduceLogSumExp / ReduceLogSum / ReduceL1 at opsets 13-17 and reduces over every axis, the batch
included (openvinotoolkit/openvino#38238). The N-label head used to export as ReduceLogSumExp, so
an hf-classifier stage with max_batch > 1 failed its parity gate at fp32 (batch 1 was right, a
batch of 2 mixed its images). The head now exports without it; the target refuses, by name, any
graph that still has such a node when the installed OpenVINO misreads it (docs/openvino-reduce.md).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from streetcascade.compile.models.base import logit_from_logits
from streetcascade.errors import CompileError, ParityError

ov = pytest.importorskip("openvino")
ort = pytest.importorskip("onnxruntime")

from streetcascade.compile.targets.openvino import (  # noqa: E402  (needs openvino)
    AXES_ATTRIBUTE_REDUCES,
    OV_ISSUE,
    misread_reductions,
    reader_drops_reduce_axes,
)


def _compile(tmp_path, source, max_batch, **stage):
    from streetcascade.compile.pipeline import compile_cascade
    from support import write_config

    stages = [{"name": "stage1", "family": "hf-classifier", "source": str(source), "max_batch": max_batch, **stage}]
    cfg = write_config(tmp_path / "c.toml", stages, tmp_path / "engines", target={"backend": "openvino", "device": "cpu"})
    return compile_cascade(cfg, progress=False, keep_raw=True)


def _ov_run(compiled, x: np.ndarray) -> np.ndarray:
    return np.asarray(compiled.create_infer_request().infer([x])[0])


def test_hf_classifier_batch_answers_like_single_images_on_openvino(tmp_path, tiny_vit_dir):
    """The reported case: a 2-label ViT, openvino target, max_batch 3, fp32. The compile's own
    gate passes (batch 1 vs batched, and PyTorch parity), the loaded engine answers a batch of 3
    like the three images alone, and ONNX Runtime computes the same batch from the same graph."""
    from streetcascade.manifest import read_manifest
    from streetcascade.runtime import load_engine_set

    dest = _compile(tmp_path, tiny_vit_dir, max_batch=3)
    graph = read_manifest(dest).stages[0].graphs[0]
    assert graph.io.max_batch == 3 and graph.parity.max_abs_prob_error < 1e-4
    raw = dest / "stage1.classifier.raw.onnx"
    assert misread_reductions(raw) == []  # nothing OpenVINO could misread is left in our export
    import onnx

    assert not {n.op_type for n in onnx.load(str(raw)).graph.node} & set(AXES_ATTRIBUTE_REDUCES)

    images = np.random.default_rng(7).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    images[2] = 255 - images[0]  # rows that differ a lot: a cross-row reduction could not hide
    with load_engine_set(dest) as es, es.engines[0].slot() as slot:  # the runtime's own OpenVINO slot
        batched = slot.infer({"pixels": images})["logit"]
        alone = np.concatenate([slot.infer({"pixels": images[i:i + 1]})["logit"] for i in range(3)])
    assert batched.shape == (3,)
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)
    assert np.ptp(alone) > 1e-3  # distinct answers: a broadcast single value would fail above

    session = ort.InferenceSession(str(raw), providers=["CPUExecutionProvider"])
    ort_batched = session.run(None, {"pixels": images})[0]
    ort_alone = np.concatenate([session.run(None, {"pixels": images[i:i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(ort_batched, ort_alone, rtol=0, atol=1e-6)
    np.testing.assert_allclose(batched, ort_batched, rtol=0, atol=1e-4)


@pytest.mark.parametrize("labels", [2, 3, 5])
def test_head_graph_batches_the_same_in_openvino_and_onnxruntime(labels):
    """The head alone (logits -> positive log-odds) for every positive index, exported like the
    stage's graph (opset 17, dynamic batch): OpenVINO and ONNX Runtime agree with the float64
    softmax log-odds at batch 1 and at batch 4, also for logits large enough to overflow exp."""

    class Head(torch.nn.Module):
        def __init__(self, positive):
            super().__init__()
            self.positive = positive

        def forward(self, logits):
            return logit_from_logits(logits, self.positive)

    rng = np.random.default_rng(labels)
    x = (rng.standard_normal((4, labels)) * np.array([[1.0], [5.0], [40.0], [120.0]])).astype(np.float32)
    core = ov.Core()
    for positive in range(labels):
        buf = io.BytesIO()
        torch.onnx.export(Head(positive).eval(), (torch.zeros(2, labels),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
        data = buf.getvalue()
        x64 = x.astype(np.float64)
        others = np.delete(x64, positive, axis=1)
        top = others.max(axis=1)
        want = x64[:, positive] - (top + np.log(np.exp(others - top[:, None]).sum(axis=1)))
        compiled = core.compile_model(core.read_model(data, b""), "CPU", {"INFERENCE_PRECISION_HINT": ov.Type.f32})
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        for name, run in (("openvino", lambda a: _ov_run(compiled, a)), ("onnxruntime", lambda a: session.run(None, {"x": a})[0])):
            batched = run(x)
            alone = np.concatenate([run(x[i:i + 1]) for i in range(len(x))])
            assert batched.shape == (4,), name
            np.testing.assert_allclose(batched, want, rtol=1e-5, atol=1e-4, err_msg=f"{name} labels={labels} positive={positive}")
            np.testing.assert_allclose(alone, batched, rtol=0, atol=1e-6, err_msg=name)


def test_logit_from_logits_is_the_softmax_log_odds():
    torch.manual_seed(0)
    for labels in (1, 2, 3, 7):
        for positive in range(labels):
            x = torch.randn(6, labels, dtype=torch.float64) * 20
            got = logit_from_logits(x, positive)
            if labels == 1:
                want = x[:, 0]
            else:
                others = torch.cat([x[:, :positive], x[:, positive + 1:]], dim=-1)
                want = x[:, positive] - torch.logsumexp(others, dim=-1)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)


def _one_reduce_graph(op_type: str, opset: int) -> bytes:
    from onnx import TensorProto, helper

    if opset >= 18:
        axes = [helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("axes", TensorProto.INT64, [1], [-1]))]
        node = helper.make_node(op_type, ["x", "axes"], ["y"], keepdims=0)
    else:
        axes, node = [], helper.make_node(op_type, ["x"], ["y"], axes=[-1], keepdims=0)
    graph = helper.make_graph([*axes, node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


@pytest.mark.parametrize("op_type", ["ReduceLogSumExp", "ReduceL1", "ReduceMax"])
def test_misread_reductions_follow_what_the_installed_openvino_does(tmp_path, op_type):
    """The check names a node exactly when the installed OpenVINO really reduces a batch of 2
    over both rows (measured here on the same graph), and never at opset 11 or 18."""
    for opset in (11, 17, 18):
        path = tmp_path / f"{op_type}-{opset}.onnx"
        path.write_bytes(_one_reduce_graph(op_type, opset))
        core = ov.Core()
        x = np.array([[0.3, -1.2, 0.9], [2.0, 0.5, -0.4]], np.float32)
        got = _ov_run(core.compile_model(core.read_model(str(path)), "CPU"), x)
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        mixes_rows = got.shape != want.shape or not np.allclose(got, want, atol=1e-5)
        named = misread_reductions(path)
        assert bool(named) == mixes_rows, (op_type, opset, named, got, want)
        if named:
            assert opset == 17 and op_type in AXES_ATTRIBUTE_REDUCES and reader_drops_reduce_axes(op_type)


def test_a_graph_openvino_would_misread_is_refused_by_name(tmp_path, tiny_vit_dir, monkeypatch):
    """The head as it was (torch.logsumexp -> ReduceLogSumExp with an axes attribute): where the
    installed OpenVINO has the bug, compile refuses with the bug's name, op and node (not a
    parity number); where it has not, the engine builds and passes the batch parity gate."""
    from streetcascade.compile.models import hf_classifier

    def old_head(logits, positive):
        others = torch.cat([logits[:, :positive], logits[:, positive + 1:]], dim=-1)
        return logits[:, positive] - torch.logsumexp(others, dim=-1)

    monkeypatch.setattr(hf_classifier, "logit_from_logits", old_head)
    if reader_drops_reduce_axes("ReduceLogSumExp"):
        with pytest.raises(CompileError, match="ReduceLogSumExp") as info:
            _compile(tmp_path, tiny_vit_dir, max_batch=2)
        assert not isinstance(info.value, ParityError)
        message = str(info.value)
        assert OV_ISSUE in message and ov.get_version().split("-")[0] in message and "onnxruntime target" in message
    else:  # an OpenVINO with the fix: the old head must batch correctly too
        _compile(tmp_path, tiny_vit_dir, max_batch=2)
