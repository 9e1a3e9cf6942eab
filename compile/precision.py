"""The ONNX graph whose types say the precision, for targets that take precision from the
graph (TensorRT 11's strongly typed networks, ONNX Runtime's GPU providers):

- fp32: the exported graph;
- fp16: converted by compile/fp16.py (LayerNorm, softmax, rotary math and the head stay FP32);
- int8-static: the Q/DQ graph of the calibrated, accuracy-gated static-INT8 flow
  (compile/static_int8.py, with the sensitivity pass's FP32 layers); the gate's figures come from
  running that Q/DQ graph in ONNX Runtime on the CPU;
- fp8: NVIDIA ModelOpt's FP8 Q/DQ graph calibrated on the calibration split (ModelOpt must be
  installed; no CPU runtime executes FP8 Q/DQ here, so the parity check on the GPU is the gate).
"""

from __future__ import annotations

from pathlib import Path

from streetcascade.errors import CompileError
from streetcascade.manifest import AccuracyGate

from .targets.base import BuildJob


def graph_for_precision(job: BuildJob, suffix: str) -> tuple[Path, AccuracyGate | None]:
    """The ONNX graph whose types say the precision, and the accuracy gate (int8-static)."""
    precision = job.stage.precision
    if precision == "fp32":
        return job.raw, None
    if precision == "fp16":
        from .fp16 import convert_fp16

        # Not "<stage>.<role>.fp16.onnx": that is the onnxruntime GPU target's engine file name.
        return convert_fp16(job.raw, job.raw.with_name(job.raw.name.replace(".raw.onnx", ".fp16.tmp.onnx"))), None
    if precision == "int8-static":
        from dataclasses import replace

        from .static_int8 import build_gated_static

        # The gated flow builds (and gates) an ONNX Runtime engine from the Q/DQ graph; TensorRT
        # then builds from that same Q/DQ graph (with the sensitivity pass's FP32 layers).
        ort_out = job.out.with_name(job.out.name.replace(suffix, ".ort-int8.onnx"))
        gate = build_gated_static(replace(job, out=ort_out))
        qdq = ort_out.with_name(ort_out.name.replace(".onnx", "") + ".qdq.onnx")
        kept = qdq.with_name(qdq.stem + ".kept.onnx")
        return (kept if kept.exists() else qdq), gate
    if precision == "fp8":
        from .quantize import modelopt_qdq
        from .static_int8 import load_split_images

        if job.config.calibration is None or not job.config.calibration.has_data():
            raise CompileError(f"stage {job.stage.name}: fp8 needs calibration images ([calibration] data or parquet)")
        _, images = load_split_images(job.config_path, job.config, "calibration", job.config.calibration.calibration_samples,
                                      job.stage.input_size, job.progress)
        dst = job.raw.with_name(job.raw.name.replace(".raw.onnx", ".fp8.qdq.onnx"))
        return modelopt_qdq(job.raw, dst, images, mode="fp8"), None
    raise CompileError(f"precision {precision!r} has no GPU graph")
