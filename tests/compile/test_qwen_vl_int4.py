"""The VLM judge at precision int4 (compile/int4.py's machinery wired into the prefill graph):
round to nearest (MatMuls as MatMulNBits, the token embedding as GatherBlockQuantized), gated
against the FP32 graphs; and an AutoAWQ checkpoint of the tiny model, written in AutoAWQ's packed
layout, imported with its own codes: the compiled judge equals transformers on the checkpoint's
own dequantized weights."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tokenizers", exc_type=ImportError)

from awq_writer import write_awq_checkpoint  # noqa: E402
from streetcascade.compile.pipeline import compile_cascade  # noqa: E402
from streetcascade.runtime import load_engine_set  # noqa: E402
from support import write_config  # noqa: E402
from vlm_support import load_model, log_softmax, processor_inputs, reference_processor, transformers_logits  # noqa: E402

from streetcascade.manifest import read_manifest  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_cache")  # AutoAWQ checkpoints' dequantized float copies

LOOSE = {"max_flip_rate": 0.5, "max_mcc_drop": 2.0, "max_accuracy_drop": 1.0, "max_auc_drop": 1.0}
# RTN int4 on a random model 64 wide (2 blocks of 32 per row): the pessimistic case. Stated
# tolerance on p(yes) against transformers' FP32 forward.
INT4_P_TOLERANCE = 0.25


def images():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, s, dtype=np.uint8) for s in [(224, 224, 3), (120, 300, 3), (330, 200, 3)]]


def reference(ckpt, family, spec, imgs, weights=None):
    processor = reference_processor(ckpt, family)
    model = load_model(weights or ckpt, family)
    size = {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
    return np.concatenate([transformers_logits(model, processor_inputs(processor, im, spec.prompt, size=size), spec.answer_ids) for im in imgs])


def test_int4_judge_is_smaller_gated_and_close(tiny_vlm, tmp_path):
    ckpt, fp32_dest = tiny_vlm("qwen2.5-vl")
    stage = {"name": "judge", "family": "qwen2.5-vl", "source": str(ckpt), "input_size": 224, "max_batch": 1, "precision": "int4",
             "int4": {"block_size": 32}, "parity_tolerance": 0.5}
    dest = compile_cascade(write_config(tmp_path / "c.toml", [stage], tmp_path / "engines", calibration=LOOSE), progress=False)
    entry = read_manifest(dest).stages[0]
    vision, prefill = entry.graphs
    wq = prefill.weight_quant
    assert vision.precision == "fp32" and vision.weight_quant is None  # the vision tower stays FP32 by default
    assert prefill.precision == "int4" and wq.method == "rtn" and wq.embeddings == 1 and wq.converted == 2 * 7 + 1  # 7 Linears a layer + answer head
    fp32_prefill = read_manifest(fp32_dest).stages[0].graphs[1]
    # The converted weights shrink ~6x (4 bits + a float scale per 32); the tiny graph's other
    # constants (rotary tables, shapes) keep the file ratio lower (bench/vlm.py measures a real shape).
    assert wq.bytes_before / wq.bytes_after > 5 and fp32_prefill.size_bytes / prefill.size_bytes > 3
    assert prefill.accuracy_gate is not None and prefill.accuracy_gate.passed and prefill.accuracy_gate.n_images == 12
    imgs = images()
    with load_engine_set(dest) as es:
        ours = es.cascade.stages[0].judge.run(imgs)
        spec = es.cascade.stages[0].judge.spec
    want = reference(ckpt, "qwen2.5-vl", spec, imgs)
    yes = np.array(spec.answer_yes)
    p_want = np.exp(log_softmax(want))[:, yes].sum(axis=1)
    assert np.abs(1 / (1 + np.exp(-ours["yes_logodds"])) - p_want).max() < INT4_P_TOLERANCE


def test_int4_judge_refused_by_a_strict_gate(tiny_vlm, tmp_path):
    from streetcascade.compile.accuracy_gate import AccuracyGateFailed

    ckpt, _ = tiny_vlm("qwen3-vl")
    stage = {"name": "judge", "family": "qwen3-vl", "source": str(ckpt), "input_size": 224, "max_batch": 1, "precision": "int4",
             "int4": {"block_size": 32}, "parity_tolerance": 0.5}
    with pytest.raises(AccuracyGateFailed, match=r"int4 engine refused by the accuracy gate \(.*max probability error .* on 12 images \(parity-images"):
        compile_cascade(write_config(tmp_path / "c.toml", [stage], tmp_path / "engines", calibration={"max_prob_error": 1e-6}), progress=False)
    assert list(tmp_path.glob("engines/*.gate-failed.json"))


def test_autoawq_checkpoint_imports_with_its_own_codes(tiny_vlm, tmp_path):
    """Every decoder Linear of the tiny Qwen3-VL replaced by random AWQ ints (GEMM layout, group
    32), vision and embeddings left float as AutoAWQ leaves them: compiled at int4 with float
    activations, the judge equals transformers on the checkpoint's dequantized weights."""
    from streetcascade.compile.int4 import float_checkpoint

    ckpt, _ = tiny_vlm("qwen3-vl")
    awq_dir = tmp_path / "qwen3-vl-awq"
    layers = write_awq_checkpoint(ckpt, awq_dir, group=32, inside=".layers.", skip=("lm_head", "visual"))
    assert len(layers) == 3 * 7 and all("language_model" in name for name in layers)
    stage = {"name": "judge", "family": "qwen3-vl", "source": str(awq_dir), "input_size": 224, "max_batch": 1, "precision": "int4",
             "int4": {"accuracy_level": 0, "embeddings": "float"}}
    dest = compile_cascade(write_config(tmp_path / "c.toml", [stage], tmp_path / "engines", calibration=LOOSE), progress=False)
    entry = read_manifest(dest).stages[0]
    wq = entry.graphs[1].weight_quant
    assert (wq.method, wq.awq_layers, wq.converted, wq.embeddings) == ("awq", 21, 21, 0)
    assert wq.kept_float  # the answer head: not in the checkpoint, left float (awq_rest = "float")
    assert any("all 21 AutoAWQ layers imported" in n for n in entry.notes)
    imgs = images()
    with load_engine_set(dest) as es:
        ours = es.cascade.stages[0].judge.run(imgs)
        spec = es.cascade.stages[0].judge.spec
    want = reference(ckpt, "qwen3-vl", spec, imgs, weights=float_checkpoint(awq_dir))
    assert np.abs(ours["answer_logits"] - want).max() < 1e-3
    assert np.abs(log_softmax(ours["answer_logits"]) - log_softmax(want)).max() < 1e-3


@pytest.mark.parametrize("symmetric", [True, False])
def test_embedding_codes_as_onnxruntime_reads_them(symmetric):
    """GatherBlockQuantized (uint8 codes, bits 4) returns exactly the rows the packing means,
    each within half a step of the float table."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from streetcascade.compile.int4 import dequantize_embedding_table, quantize_embedding_table

    table = np.random.default_rng(0).standard_normal((300, 96)).astype(np.float32)
    packed, scales, zero = quantize_embedding_table(table, 32, symmetric)
    dequant = dequantize_embedding_table(packed, scales, zero, 32)
    assert np.all(np.abs(dequant - table) <= np.repeat(scales, 32, axis=1)[:, :96] * 0.5 + 1e-6)
    inits = [numpy_helper.from_array(packed, "codes"), numpy_helper.from_array(scales, "scales")]
    inputs = ["codes", "ids", "scales"]
    if zero is not None:
        inits.append(numpy_helper.from_array(zero, "zero"))
        inputs.append("zero")
    node = helper.make_node("GatherBlockQuantized", inputs, ["rows"], domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=32, bits=4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "t"])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    ids = np.array([[0, 7, 299, 150]], np.int64)
    rows = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    assert np.array_equal(rows, dequant[ids])
