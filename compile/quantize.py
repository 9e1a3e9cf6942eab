"""Static INT8 with explicit Q/DQ for the ONNX Runtime CPU target, plus the graph surgery the
accuracy gate's sensitivity pass needs.

The recipe (why each choice: docs/quantization.md):
- QDQ format, uint8 activations (asymmetric) x int8 weights (symmetric, per output channel):
  the U8S8 pair ORT's VNNI kernels take; S8S8 activations leave most MatMuls unfused on CPU.
- Only MatMul/Gemm/Conv nodes whose weight is a constant: attention's activation x activation
  MatMuls (QK^T, PV), LayerNorm, Softmax, GELU stay FP32. The classification head and the
  first patch-embedding Conv stay FP32 by default too.
- No Q/DQ on the MatMul outputs: ORT then fuses DQ + DQ + MatMul into MatMulIntegerToFloat
  (float out), instead of QLinearMatMul + requantize + DequantizeLinear per layer.
- After ORT's offline optimisation, a bias Add that follows a MatMulIntegerToFloat is folded
  into the node's bias input (ORT does that for the dynamic graph, not for the QDQ one).
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from streetcascade.errors import BackendUnavailable, CompileError
from streetcascade.manifest import GraphIO
from streetcascade.settings import RuntimeConfig

log = logging.getLogger(__name__)

WEIGHTED_OP_TYPES = ("MatMul", "Gemm", "Conv")
METHODS = ("minmax", "entropy", "percentile")
QUANT_SUFFIX = "_quantized"  # onnxruntime.quantization's name for a quantized initializer


@dataclass(frozen=True)
class StaticRecipe:
    method: str = "minmax"  # minmax | entropy | percentile
    percentile: float = 99.999
    activation_type: str = "uint8"  # uint8 (U8S8, fast on x86) | int8 (S8S8)
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights: only for CPUs without VNNI
    quantize_outputs: bool = False  # True: Q/DQ after MatMul too (-> QLinearMatMul)
    activation_symmetric: bool = False
    constant_weights_only: bool = True  # False: also attention's activation x activation MatMuls
    quantize_patch_embed: bool = False
    quantize_head: bool = False
    fuse_bias: bool = True
    nodes_to_exclude: tuple[str, ...] = ()
    calibration_batch: int = 8


@dataclass
class WeightedNode:
    name: str
    op_type: str
    role: str  # "patch_embed" | "head" | "body" | "activation_matmul"


@dataclass
class StaticResult:
    path: Path
    quantized: list[str]  # node names with Q/DQ on their inputs
    excluded: list[str] = field(default_factory=list)


def _load(path: Path):
    import onnx

    return onnx.load(str(path))


def name_nodes(model) -> bool:
    """Give every unnamed node a unique name (the quantizer selects nodes by name)."""
    changed, seen = False, Counter()
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
            changed = True
        seen[node.name] += 1
    for node in model.graph.node:
        if seen[node.name] > 1:
            raise CompileError(f"graph has {seen[node.name]} nodes named {node.name!r}; cannot select nodes to quantize")
    return changed


def weighted_nodes(model) -> list[WeightedNode]:
    """MatMul/Gemm/Conv nodes in graph order, with their role. A node has a constant weight
    when its second input is an initializer (or a Constant node's output)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    nodes: list[WeightedNode] = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OP_TYPES or len(node.input) < 2:
            continue
        role = "body" if node.input[1] in constants else "activation_matmul"
        nodes.append(WeightedNode(node.name, node.op_type, role))
    weighted = [n for n in nodes if n.role == "body"]
    if weighted and weighted[0].op_type == "Conv":
        weighted[0].role = "patch_embed"
    if len(weighted) > 1:
        weighted[-1].role = "head"  # the node nearest the output: the classifier's Linear
    return nodes


def select_nodes(model, recipe: StaticRecipe) -> tuple[list[str], list[str]]:
    """(nodes to quantize, weighted nodes left FP32) under `recipe`."""
    keep, skip = [], []
    for node in weighted_nodes(model):
        wanted = {
            "body": True,
            "activation_matmul": not recipe.constant_weights_only and node.op_type == "MatMul",
            "patch_embed": recipe.quantize_patch_embed,
            "head": recipe.quantize_head,
        }[node.role]
        if wanted and node.name not in recipe.nodes_to_exclude:
            keep.append(node.name)
        else:
            skip.append(node.name)
    return keep, skip


class _HushPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextmanager
def quiet_preprocess_advice():
    """onnxruntime.quantization advises `quant_pre_process` on the root logger at every call
    (static and dynamic); its symbolic shape inference is not needed for these graphs (see
    docs/quantization.md)."""
    root, hush = logging.getLogger(), _HushPreprocessAdvice()
    root.addFilter(hush)
    try:
        yield
    finally:
        root.removeFilter(hush)


class _ArrayReader:
    """onnxruntime CalibrationDataReader over a uint8 NHWC array."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int):
        self._feeds = iter([{input_name: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self):  # pragma: no cover - part of the protocol, unused by quantize_static
        raise NotImplementedError


def quantize_static_qdq(raw: Path, dst: Path, images: np.ndarray, recipe: StaticRecipe = StaticRecipe()) -> StaticResult:
    """Calibrate on `images` (uint8 NHWC at the model's size) and write a QDQ graph to `dst`."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if recipe.method not in METHODS:
        raise CompileError(f"calibration method {recipe.method!r}: use one of {', '.join(METHODS)}")
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise CompileError(f"calibration images must be a non-empty uint8 NHWC array, got {images.shape} {images.dtype}")
    import onnx

    model = _load(raw)
    src = raw
    if name_nodes(model):
        src = dst.with_name(dst.stem + ".named.onnx")
        onnx.save(model, str(src))
    nodes, skipped = select_nodes(model, recipe)
    if not nodes:
        raise CompileError(f"{raw.name}: no MatMul/Gemm/Conv with constant weights to quantize")
    input_name = model.graph.input[0].name

    class Reader(_ArrayReader, CalibrationDataReader):
        pass

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[recipe.method]
    extra = {
        "ActivationSymmetric": recipe.activation_symmetric,
        "WeightSymmetric": True,
        "MatMulConstBOnly": recipe.constant_weights_only,
    }
    if not recipe.quantize_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(WEIGHTED_OP_TYPES)
    # Not "CalibMaxIntermediateOutputs": in onnxruntime 1.32 MinMaxCalibrater.collect_data drops
    # the collected outputs when the cap is reached instead of merging their ranges (measured:
    # zero points off by up to 12 on 25 batches). Calibration memory therefore grows with the
    # sample count: ~6 GiB for ViT-B/16 at 100 samples, out of 23 GiB at 224.
    if recipe.method == "percentile":
        extra["CalibPercentile"] = recipe.percentile
    act = QuantType.QUInt8 if recipe.activation_type == "uint8" else QuantType.QInt8
    try:
        with quiet_preprocess_advice():
            quantize_static(
                str(src),
                str(dst),
                # Histogram collectors (entropy, percentile) stack per-call arrays: equal batches only.
                Reader(input_name, images, recipe.calibration_batch if recipe.method == "minmax" else 1),
                quant_format=QuantFormat.QDQ,
                activation_type=act,
                weight_type=QuantType.QInt8,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                op_types_to_quantize=list(WEIGHTED_OP_TYPES),
                nodes_to_quantize=nodes,
                calibrate_method=method,
                extra_options=extra,
            )
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError(f"static INT8 quantization of {raw.name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        if src != raw:
            src.unlink(missing_ok=True)
    log.info("quantized %d node(s) of %s (%s calibration on %d images); FP32: %d weighted node(s)", len(nodes), raw.name, recipe.method, len(images), len(skipped))
    return StaticResult(dst, nodes, skipped)


def dequantize_nodes(qdq_path: Path, raw_path: Path, fp32_nodes: Sequence[str], dst: Path | None = None):
    """The QDQ graph with the given nodes put back to FP32 (their inputs rewired past the
    DequantizeLinear to the float tensors; dead Q/DQ and initializers dropped).

    Returns the ModelProto; also saved to `dst` when given. Calibration is not repeated: every
    other tensor keeps its scale, exactly as `nodes_to_exclude` would have produced.
    """
    import onnx

    model = _load(qdq_path)
    raw = _load(raw_path)
    raw_inits = {i.name: i for i in raw.graph.initializer}
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    targets = set(fp32_nodes)
    found = set()
    for node in model.graph.node:
        if node.name not in targets:
            continue
        found.add(node.name)
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
                continue
            quantized = dq.input[0]
            original = quantized[: -len(QUANT_SUFFIX)] if quantized.endswith(QUANT_SUFFIX) else None
            if original is None or original not in raw_inits:
                raise CompileError(f"cannot find the FP32 weight behind {quantized!r} (node {node.name})")
            if original not in inits:
                model.graph.initializer.append(raw_inits[original])
                inits[original] = raw_inits[original]
            node.input[k] = original
    missing = targets - found
    if missing:
        raise CompileError(f"nodes not in the graph: {sorted(missing)[:5]}")
    # The quantizer also points other readers of a quantized activation (e.g. Shape) at the DQ
    # output; once no weighted node reads that DQ, send them back to the float tensor.
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
        q = producer.get(dq.input[0])
        users = readers.get(dq.output[0], [])
        if q is None or q.op_type != "QuantizeLinear" or any(u.op_type in WEIGHTED_OP_TYPES for u in users):
            continue
        for u in users:
            for k, name in enumerate(u.input):
                if name == dq.output[0]:
                    u.input[k] = q.input[0]
    _prune(model)
    if dst is not None:
        onnx.save(model, str(dst))
    return model


def _prune(model) -> None:
    """Drop Q/DQ nodes whose outputs nobody reads, then unreferenced initializers."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | graph_outputs
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def fuse_matmul_integer_bias(path: Path) -> int:
    """Fold `Add(MatMulIntegerToFloat(...), bias)` into the node's optional bias input, in place.

    ORT's optimiser does this for the dynamic-quantization graph but not for MatMulIntegerToFloat
    nodes made from QDQ; an unfused Add is one more pass over the activation per layer.
    Returns the number of Adds folded.
    """
    import onnx
    from onnx import numpy_helper

    model = _load(path)
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    fused = 0
    for node in list(model.graph.node):
        if node.op_type != "MatMulIntegerToFloat" or node.domain != "com.microsoft":
            continue
        if len(node.input) >= 7 and node.input[6]:
            continue
        out = node.output[0]
        users = consumers.get(out, [])
        if out in graph_outputs or len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        other = add.input[1] if add.input[0] == out else add.input[0]
        weight = inits.get(node.input[1])
        bias = inits.get(other)
        if weight is None or bias is None:
            continue
        b = numpy_helper.to_array(bias)
        if b.ndim != 1 or b.dtype != np.float32 or b.shape[0] != weight.dims[-1]:
            continue
        inputs = list(node.input) + [""] * (6 - len(node.input))
        del node.input[:]
        node.input.extend(inputs[:6] + [other])
        del node.output[:]
        node.output.append(add.output[0])
        model.graph.node.remove(add)
        fused += 1
    if fused:
        onnx.save(model, str(path))
    return fused


def op_histogram(path: Path) -> dict[str, int]:
    return dict(Counter(n.op_type for n in _load(path).graph.node).most_common())


def build_static(
    raw: Path,
    out_path: Path,
    images: np.ndarray,
    recipe: StaticRecipe,
    io: GraphIO,
    runtime: RuntimeConfig = RuntimeConfig(),
    keep_fp32: Sequence[str] | Callable[[StaticResult, Path], Sequence[str]] = (),
) -> StaticResult:
    """The one static-INT8 builder (compile's int8-static and the quantization bench both run it):
    quantize (QDQ) calibrated on `images`; put the `keep_fp32` nodes back to FP32, given as a list
    or as a function of the first quantization's result and QDQ file (the accuracy gate's
    sensitivity pass); optimise offline; fold the biases."""
    from .targets.onnxruntime import optimize_offline

    qdq = out_path.with_name(out_path.name.replace(".onnx", "") + ".qdq.onnx")
    result = quantize_static_qdq(raw, qdq, images, recipe)
    kept = list(keep_fp32(result, qdq) if callable(keep_fp32) else keep_fp32)
    src = qdq
    if kept:
        src = qdq.with_name(qdq.stem + ".kept.onnx")
        dequantize_nodes(qdq, raw, kept, src)
        result = replace(result, quantized=[n for n in result.quantized if n not in set(kept)], excluded=result.excluded + kept)
    optimize_offline(src, out_path, io, runtime)
    if recipe.fuse_bias:
        n = fuse_matmul_integer_bias(out_path)
        log.debug("folded %d bias Add(s) into MatMulIntegerToFloat", n)
    return replace(result, path=out_path)


# ------------------------------------------------------------------------------- ModelOpt (TensorRT)


def modelopt_qdq(raw: Path, dst: Path, images: np.ndarray, mode: str = "int8", method: str = "entropy", nodes_to_exclude: Sequence[str] = ()) -> Path:
    """INT8/FP8 Q/DQ graph for the TensorRT target via NVIDIA ModelOpt (TensorRT 11 has no
    calibrator: precision comes from explicit Q/DQ). LayerNorm, Softmax and GELU stay in the
    high-precision type; the head can be excluded by name.

    ModelOpt is optional (its `[onnx]` extra downgrades onnx): without it -> BackendUnavailable.
    """
    if mode not in ("int8", "fp8"):
        raise CompileError(f"ModelOpt mode {mode!r}: use int8 or fp8")
    if method not in ("entropy", "max"):
        raise CompileError(f"ModelOpt calibration method {method!r}: use entropy or max")
    try:
        from modelopt.onnx.quantization import quantize as mo_quantize  # type: ignore
    except ImportError as exc:
        raise BackendUnavailable(
            f"NVIDIA ModelOpt is not installed ({exc}); install it in the TensorRT build environment "
            "(`pip install nvidia-modelopt[onnx]`, in its own venv: it pins onnx/onnxruntime-gpu) to build INT8/FP8 Q/DQ graphs"
        ) from None
    import onnx

    input_name = _load(raw).graph.input[0].name
    try:
        mo_quantize(
            onnx_path=str(raw),
            quantize_mode=mode,
            calibration_data={input_name: images},
            calibration_method=method,
            calibration_eps=["cpu"],
            op_types_to_exclude=["LayerNormalization", "Softmax", "Gelu", "Erf"],
            nodes_to_exclude=list(nodes_to_exclude) or None,
            high_precision_dtype="fp16",
            output_path=str(dst),
        )
    except Exception as exc:
        raise CompileError(f"ModelOpt {mode} quantization of {raw.name} failed: {type(exc).__name__}: {exc}") from exc
    onnx.checker.check_model(str(dst))
    return dst
