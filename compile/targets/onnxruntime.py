"""ONNX Runtime target: quantize (optional) and optimise a graph offline, saving the result,
so loading needs no optimiser pass."""

from __future__ import annotations

import logging
from pathlib import Path

from streetcascade.errors import CompileError

log = logging.getLogger(__name__)

BACKEND = "onnxruntime"
PRECISIONS = ("fp32", "int8-dynamic")


def quantize_dynamic_int8(src: Path, dst: Path) -> Path:
    """Weights INT8 ahead of time, activations quantized per call: no calibration data.

    Only MatMul/Gemm (where the time goes); LayerNorm, Softmax, GELU and the head's
    normalisation stay FP32, which is what keeps ViTs accurate under INT8.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=False,
            extra_options={"MatMulConstBOnly": True},
        )
    except Exception as exc:
        raise CompileError(f"dynamic INT8 quantization of {src.name} failed: {exc}") from exc
    return dst


def optimize_offline(src: Path, dst: Path, intra_op_threads: int = 0) -> Path:
    """Run ORT's full graph optimiser once and save the optimised graph (fusions for
    attention, GELU, LayerNorm, MatMul+Add; layout transforms for this CPU)."""
    import onnxruntime as ort

    from streetcascade.runtime.backends.onnxruntime import session_options

    so = session_options(intra_op_threads, optimize=True)
    so.optimized_model_filepath = str(dst)
    # ORT warns that an ENABLE_ALL graph may hold hardware-specific (NCHWc) kernels: that is
    # why the manifest records the CPU features and the loader checks them.
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(src), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CompileError(f"onnxruntime could not optimise {src.name}: {str(exc).splitlines()[0]}") from exc
    if not dst.exists():
        raise CompileError(f"onnxruntime did not write the optimised graph {dst}")
    return dst


def build(raw_onnx: Path, out_path: Path, precision: str, intra_op_threads: int = 0) -> Path:
    if precision not in PRECISIONS:
        raise CompileError(f"precision {precision!r} is not available for the onnxruntime target here (have: {', '.join(PRECISIONS)})")
    src = raw_onnx
    if precision == "int8-dynamic":
        src = quantize_dynamic_int8(raw_onnx, raw_onnx.with_suffix(".int8.onnx"))
    return optimize_offline(src, out_path, intra_op_threads)
