"""OpenVINO target (CPU): the exported ONNX graph -> an OpenVINO IR pair (`.xml` graph +
`.bin` weights, the weights kept FP32), at one of three precisions:

- fp32: computed in f32 (asked for explicitly: OpenVINO's default on bf16-capable CPUs is bf16);
- bf16: the same IR computed in bf16 by the CPU plugin (AMX / AVX512_BF16 only), gated against
  the FP32 engine on the validation split like INT8;
- int8-static: NNCF post-training quantization (transformer preset: SmoothQuant, fast bias
  correction) calibrated on the calibration split, the patch embedding and the head left in
  float, the rest computed in bf16 where the CPU has it (else f32), gated the same way;
- int4: 4-bit weights, f32 activations. From an AutoAWQ checkpoint, the checkpoint's own codes:
  compile/int4.py imports them into an ONNX MatMulNBits graph, and OpenVINO's ONNX reader turns
  each MatMulNBits into u4 constants + zero points + scales (the same weights, bit for bit: no
  re-quantization). Otherwise NNCF's weight compression (INT4_SYM / INT4_ASYM, group size =
  `[stages.int4] block_size`, every MatMul but `keep_float`, no INT8 backup layers).

The compute precision is written into the IR (rt_info, runtime/backends/openvino.py reads it),
so the engine runs as it was gated on any machine that loads it. The ONNX graph's metadata
(an OCR model's character set, a tokenizer) is carried into the IR too.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import numpy as np

from streetcascade.config import CascadeConfig
from streetcascade.errors import BackendUnavailable, CompileError, ConfigError
from streetcascade.machine import arch, cpu_features
from streetcascade.manifest import AccuracyGate, TargetInfo

from .base import BuildJob, BuiltGraph, Target


OPENVINO = "openvino"


def compute_precision(precision: str) -> str:
    """The compute precision recorded in the IR for our `precision`. INT8 engines compute what
    NNCF left unquantized (LayerNorm, softmax, GELU, residual adds, the attention's FP32 parts)
    in bf16 where the CPU has it: measured 5-25% faster than an f32 remainder on DINOv3 here
    (docs/benchmarks.md), and the gate holds the result against FP32 like any other."""
    if precision == "int8-static":
        return "bf16" if _openvino().has_bf16() else "f32"
    return {"fp32": "f32", "bf16": "bf16", "int4": "f32"}[precision]


def _openvino():
    try:
        from streetcascade.runtime.backends import openvino as backend_module
    except BackendUnavailable as exc:
        raise BackendUnavailable(f"the openvino target needs OpenVINO: {exc}") from None
    return backend_module


def weights_file(xml: Path) -> Path:
    """The `.bin` OpenVINO writes beside a `.xml`."""
    return xml.with_suffix(".bin")


def save_ir(model, xml: Path, compute: str, metadata: dict[str, str], fixed_batch1: bool = False,
            dynamic_quantization: int | None = None) -> Path:
    """Write `model` as IR with its compute precision and metadata in rt_info; weights stay as
    they are (FP32, or int4's u4 codes). `fixed_batch1`: the backend runs batch 1 through a
    fixed-shape copy (gated engines only). `dynamic_quantization`: the CPU plugin's
    DYNAMIC_QUANTIZATION_GROUP_SIZE for the engine (int4; None = the plugin's default)."""
    import openvino as ov

    mod = _openvino()
    model.set_rt_info(compute, mod.PRECISION_KEY)
    model.set_rt_info("true" if fixed_batch1 else "false", mod.FIXED_BATCH1_KEY)
    if dynamic_quantization is not None:
        model.set_rt_info(str(dynamic_quantization), mod.DYNAMIC_QUANT_KEY)
    if metadata:
        model.set_rt_info(json.dumps(metadata, sort_keys=True), mod.METADATA_KEY)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def save_gated_ir(model, xml: Path, precision: str, metadata: dict[str, str]) -> Path:
    """A bf16 / int8-static engine as the target writes it: its compute precision, and batch 1
    through a fixed-shape copy (the gate measures both plans)."""
    return save_ir(model, xml, compute_precision(precision), metadata, fixed_batch1=True)


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def count_ops(model, types: tuple[str, ...]) -> int:
    return sum(1 for op in model.get_ops() if op.get_type_name() in types)


# Reductions whose `axes` is an attribute at ONNX opsets 13-17 (an input only from 18), and which
# some OpenVINO ONNX readers convert as if it were an input: absent, so over EVERY axis, the
# batch axis included (openvinotoolkit/openvino#38238; ReduceLogSumExp from 2026.3.0, ReduceL1
# earlier; docs/openvino-reduce.md). At batch 1 the numbers even come out right; at batch N the
# images are mixed. Probed per op on the installed OpenVINO, so a fixed release passes.
AXES_ATTRIBUTE_REDUCES = ("ReduceL1", "ReduceLogSum", "ReduceLogSumExp")
OV_ISSUE = "openvinotoolkit/openvino#38238"


@functools.cache
def reader_drops_reduce_axes(op_type: str) -> bool:
    """True when the installed OpenVINO reads a one-node opset-17 `op_type` graph (axes=[1] on a
    [2, 3] input) with an output shape other than [2]: the attribute was ignored."""
    import openvino as ov
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node(op_type, ["x"], ["y"], axes=[1], keepdims=0)], "axes_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    read = _openvino().core().read_model(probe.SerializeToString(), b"")
    return read.outputs[0].get_partial_shape() != ov.PartialShape([2])


def misread_reductions(path: Path) -> list[str]:
    """The nodes of the ONNX graph at `path` that the installed OpenVINO would reduce over every
    axis (see AXES_ATTRIBUTE_REDUCES), as "OpType 'name'"."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 13 <= opset <= 17:
        return []
    return [f"{n.op_type} {n.name or '(unnamed)'!r}" for n in model.graph.node
            if n.op_type in AXES_ATTRIBUTE_REDUCES and any(a.name == "axes" for a in n.attribute) and reader_drops_reduce_axes(n.op_type)]


def read_onnx(path: Path, what: str):
    """`path` read by OpenVINO's ONNX reader; refused (CompileError naming the OpenVINO bug) when
    the reader would silently turn a per-row reduction into one over the whole batch."""
    misread = misread_reductions(path)
    if misread:
        import openvino as ov

        raise CompileError(
            f"{what}: OpenVINO {ov.get_version().split('-')[0]} ignores the `axes` attribute of "
            f"{', '.join(sorted({m.split()[0] for m in misread}))} at ONNX opsets 13-17 and reduces over every axis, the batch "
            f"included ({OV_ISSUE}), so a batch would not answer like its images one at a time. Affected node(s): "
            f"{', '.join(misread[:5])}{' ...' if len(misread) > 5 else ''}. Build this stage for the onnxruntime target, "
            "use an OpenVINO release without the bug (<= 2026.2.1 for ReduceLogSumExp), or export the graph at opset 18 "
            "(axes as an input)")
    try:
        return _openvino().core().read_model(str(path))
    except Exception as exc:
        raise CompileError(f"openvino could not read {path.name}: {str(exc)[:500]}") from exc


WEIGHTED_OPS = ("MatMul", "Convolution")


def edge_layers(model) -> list[str]:
    """The first weighted layer when it is a convolution (a ViT's patch embedding) and the last
    one (the classifier's head): the layers ONNX Runtime's static recipe leaves in float too
    (compile/quantize.py). Quantizing them doubled NNCF's decision flips on DINOv3 ViT-S (2.7%
    vs 1.5% of 402 validation challenges, docs/quantization.md) for ~2% of the time."""
    def constant_weight(op) -> bool:
        source = op.input_value(1).get_node()
        while source.get_type_name() == "Convert":  # a compressed weight is Constant -> Convert
            source = source.input_value(0).get_node()
        return source.get_type_name() == "Constant"

    weighted = [op for op in model.get_ordered_ops() if op.get_type_name() in WEIGHTED_OPS and constant_weight(op)]
    edges = []
    if weighted and weighted[0].get_type_name() == "Convolution":
        edges.append(weighted[0].get_friendly_name())
    if len(weighted) > 1:
        edges.append(weighted[-1].get_friendly_name())
    return edges


def nncf_int8(model, images, progress) -> object:
    """NNCF post-training INT8 (transformer preset), one calibration image per item; the patch
    embedding and the head stay in float (`edge_layers`)."""
    try:
        import nncf
    except ImportError as exc:
        raise BackendUnavailable(f"int8-static on the openvino target needs NNCF (pip install 'streetcascade[openvino]'): {exc}") from None
    nncf.set_log_level(logging.WARNING)
    progress.step(f"NNCF post-training INT8 (transformer preset) on {len(images)} calibration images")
    try:
        return nncf.quantize(model, nncf.Dataset([img[None] for img in images]), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(images), ignored_scope=nncf.IgnoredScope(names=edge_layers(model)))
    except Exception as exc:  # NNCF raises many kinds; the stage and the cause are what matter
        raise CompileError(f"NNCF could not quantize the graph: {type(exc).__name__}: {str(exc)[:500]}") from exc


FOUR_BIT = ("u4", "i4")


def int4_report(model, settings):
    """The manifest's WeightQuant for an IR NNCF gave 4-bit weights (round to nearest), counted
    from the graph: each MatMul whose weight is computed from a u4/i4 constant (the decompression
    subgraph NNCF and the ONNX reader write), its float32 size before and the bytes of its
    constants after."""
    from streetcascade.manifest import WeightQuant

    def chain(node, seen):
        """The Constants feeding a weight through Convert/Subtract/Multiply/Reshape/Transpose."""
        if node.get_friendly_name() in seen:
            return []
        seen.add(node.get_friendly_name())
        if node.get_type_name() == "Constant":
            return [node]
        if node.get_type_name() not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"):
            return []
        return [c for i in range(node.get_input_size()) for c in chain(node.input_value(i).get_node(), seen)]

    converted, kept, before, after = 0, [], 0, 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        constants = chain(op.input_value(1).get_node(), set())
        if not constants:
            continue
        if any(c.get_output_element_type(0).get_type_name() in FOUR_BIT for c in constants):
            converted += 1
            before += int(np.prod(list(op.input_value(1).get_partial_shape().to_shape()))) * 4
            after += sum(c.get_byte_size() for c in constants)
        elif len(constants) == 1 and constants[0].get_output_element_type(0).get_type_name() in ("f32", "f16", "bf16"):
            kept.append(op.get_friendly_name())
    if not converted:
        return None
    return WeightQuant(method="rtn", bits=4, block_size=settings.block_size, symmetric=settings.symmetric, accuracy_level=settings.accuracy_level,
                       converted=converted, kept_float=kept, bytes_before=before, bytes_after=after)


def nncf_int4(model, settings, progress) -> object:
    """NNCF weight compression to 4 bits (round to nearest per group, no data): every MatMul with
    a constant weight but the `keep_float` patterns, none in an INT8 backup mode."""
    import fnmatch

    try:
        import nncf
    except ImportError as exc:
        raise BackendUnavailable(f"int4 on the openvino target needs NNCF (pip install 'streetcascade[openvino]'): {exc}") from None
    nncf.set_log_level(logging.WARNING)
    ignored = [op.get_friendly_name() for op in model.get_ordered_ops()
               if op.get_type_name() == "MatMul" and any(fnmatch.fnmatchcase(op.get_friendly_name(), p) for p in settings.keep_float)]
    mode = nncf.CompressWeightsMode.INT4_SYM if settings.symmetric else nncf.CompressWeightsMode.INT4_ASYM
    progress.step(f"NNCF weight compression: {mode.value}, group size {settings.block_size}, {len(ignored)} MatMul(s) kept float")
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    # A layer whose K is not a multiple of the group size gets the largest power of two (>= 16)
    # dividing K instead (ONNX Runtime pads K to a whole block instead).
    advanced = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=16)
    try:
        return nncf.compress_weights(model, mode=mode, ratio=1.0, group_size=settings.block_size, all_layers=True,
                                     backup_mode=nncf.BackupMode.NONE, ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
                                     advanced_parameters=advanced)
    except Exception as exc:
        raise CompileError(f"NNCF could not compress the weights to 4 bits: {type(exc).__name__}: {str(exc)[:500]}") from exc


class OpenVinoTarget(Target):
    judge_stages = True
    backend = OPENVINO
    precisions = ("fp32", "bf16", "int8-static", "int4")
    suffix = ".xml"

    def describe(self, config: CascadeConfig) -> TargetInfo:
        if config.target.device != "cpu":
            raise ConfigError(f"target.device {config.target.device!r}: the openvino target builds for the CPU")
        _openvino()
        return TargetInfo(name=config.target.name or f"cpu-{arch()}-openvino", backend=self.backend, device="cpu", arch=arch(),
                          cpu_features=list(cpu_features()))

    def check_precision(self, stage, device: str = "cpu") -> None:
        super().check_precision(stage, device)
        if stage.precision == "bf16" and not _openvino().has_bf16():
            raise CompileError(f"stage {stage.name}: bf16 needs a CPU with {' or '.join(_openvino().BF16_FEATURES)} "
                               "(without, OpenVINO computes in f32); use fp32 or int8-static here")

    def build(self, job: BuildJob) -> BuiltGraph:
        precision = job.stage.precision
        where = {"int8-static": " outside the INT8 layers", "int4": " with 4-bit weights"}.get(precision, "")
        job.progress.step(f"{job.stage.name}: OpenVINO IR, {precision} (computed in {compute_precision(precision)}{where})")
        metadata = onnx_metadata(job.raw)
        if precision == "int4":
            return self._int4(job, metadata)
        model = read_onnx(job.raw, f"{job.stage.name}: {job.raw.name}")
        gate = None
        if precision == "fp32":
            save_ir(model, job.out, "f32", metadata)
        else:
            gate = self._gated(job, model, metadata)
        return BuiltGraph(job.out, gate, companions=[weights_file(job.out)])

    def _int4(self, job: BuildJob, metadata: dict[str, str]) -> BuiltGraph:
        """4-bit weights: an AutoAWQ source's own codes through the MatMulNBits graph, else NNCF.
        (Only the graph OpenVINO compresses is read: the float one is dropped on the AWQ path.)"""
        from ..int4 import awq_checkpoint_of, build_int4_onnx, describe

        settings = job.stage.int4_settings
        matched: list[str] = []
        awq_dir = awq_checkpoint_of(job.stage, job.config_path)
        if awq_dir is not None:
            graph = build_int4_onnx(job, job.raw.with_name(job.raw.name.replace(".raw.onnx", ".int4.tmp.onnx")), awq_dir)
            matched = graph.awq_matched
            model = read_onnx(graph.path, f"{job.stage.name}: the 4-bit graph {graph.path.name}")
            report = graph.report
        else:
            model = nncf_int4(read_onnx(job.raw, f"{job.stage.name}: {job.raw.name}"), settings, job.progress)
            report = int4_report(model, settings)
            job.progress.step(f"{job.stage.name}: {describe(report)}")
        save_ir(model, job.out, "f32", metadata, dynamic_quantization=0 if settings.accuracy_level == 0 else None)
        return BuiltGraph(job.out, companions=[weights_file(job.out)], weight_quant=report, awq_matched=matched)

    def _gated(self, job: BuildJob, model, metadata: dict[str, str]) -> AccuracyGate:
        """bf16 / int8-static: build, then hold against the FP32 IR on the validation split."""
        from .. import accuracy_gate as gate_mod
        from ..static_int8 import load_split_images

        stage, config, progress = job.stage, job.config, job.progress
        cal = config.calibration
        if cal is None or not cal.has_data():  # load_config refuses this already
            raise ConfigError(f"{stage.name}: {stage.precision} needs a [calibration] table with data for its accuracy gate")
        val, val_images = load_split_images(job.config_path, config, "validation", cal.validation_samples, stage.input_size, progress)
        ref = job.out.with_name(job.out.name.replace(f".{stage.precision}{self.suffix}", f".fp32-ref{self.suffix}"))
        try:
            save_ir(model.clone(), ref, "f32", metadata)
            fp32_logits = gate_mod.engine_logits(ref, job.io, val_images, config.runtime, backend_name=OPENVINO)
        finally:
            ref.unlink(missing_ok=True)
            weights_file(ref).unlink(missing_ok=True)
        n_calibration, method = 0, "bf16"
        if stage.precision == "int8-static":
            calib, calib_images = load_split_images(job.config_path, config, "calibration", cal.calibration_samples, stage.input_size, progress)
            model = nncf_int8(model, calib_images, progress)
            n_calibration, method = len(calib), f"nncf-transformer-{compute_precision(stage.precision)}"
            quantized = count_ops(model, ("FakeQuantize",))
        else:
            quantized = count_ops(model, WEIGHTED_OPS)
        save_gated_ir(model, job.out, stage.precision, metadata)
        # Gated as it runs: batch 1 goes through the fixed-shape copy, larger batches through the
        # dynamic graph; the kernels differ, so both are measured and the worse one is recorded.
        gates = [gate_mod.compare(fp32_logits, quant_logits, val.labels, method=method, n_calibration=n_calibration, limits=cal,
                                  quantized_nodes=quantized, reference="openvino-fp32")
                 for quant_logits in gate_mod.engine_logits_each_batch(job.out, job.io, val_images, config.runtime, backend_name=OPENVINO)]
        return gate_mod.enforce_worst(stage.name, gates, stage.precision, [job.out, weights_file(job.out)], progress)


TARGET = OpenVinoTarget()
