"""ONNX Runtime target: quantize (optional) and optimise a graph offline, saving the result,
so loading needs no optimiser pass. The optimisation is a load of the graph through the
runtime's own backend with `save_optimized_to` set: one place creates ORT sessions."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from streetcascade.config import CascadeConfig
from streetcascade.errors import CompileError, ConfigError, StreetcascadeError
from streetcascade.machine import arch, cpu_features, default_target_name
from streetcascade.manifest import GraphIO, TargetInfo
from streetcascade.runtime.backends import get_backend
from streetcascade.settings import RuntimeConfig

from .base import BuildJob, BuiltGraph, Target

log = logging.getLogger(__name__)

ONNXRUNTIME = "onnxruntime"


def quantize_dynamic_int8(src: Path, dst: Path) -> Path:
    """Weights INT8 ahead of time, activations quantized per call: no calibration data.

    Only MatMul/Gemm (where the time goes); LayerNorm, Softmax, GELU and the head's
    normalisation stay FP32, which is what keeps ViTs accurate under INT8.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..quantize import quiet_preprocess_advice

    from ..export import has_external_data

    try:
        with quiet_preprocess_advice():
            quantize_dynamic(
                str(src),
                str(dst),
                use_external_data_format=has_external_data(src),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=False,
                # DefaultTensorType: shape inference types no contrib-op output (a fused attention op's).
                extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    except Exception as exc:
        raise CompileError(f"dynamic INT8 quantization of {src.name} failed: {exc}") from exc
    _drop_untyped_value_info(dst)
    return dst


def _drop_untyped_value_info(path: Path) -> None:
    """The quantizer writes value_info without a type for contrib-op outputs (`attention =
    "fused"`, compile/fused_attention.py), which ONNX Runtime refuses to load; those entries
    carry nothing."""
    import onnx

    from ..fused_attention import drop_untyped_value_info

    model = onnx.load(str(path))
    if drop_untyped_value_info(model):
        onnx.save(model, str(path))


def optimize_offline(src: Path, dst: Path, io: GraphIO, runtime: RuntimeConfig = RuntimeConfig()) -> Path:
    """Run ORT's full graph optimiser once and save the optimised graph (fusions for attention,
    GELU, LayerNorm, MatMul+Add; layout transforms for this CPU). A source with its weights in an
    external file (past protobuf's 2 GiB) gives `dst` with its weights in `weights_file(dst)`."""
    from ..export import has_external_data, weights_file

    backend = get_backend(ONNXRUNTIME)
    options = msgspec.structs.replace(backend.options_for(runtime, "cpu"), save_optimized_to=str(dst),
                                      save_weights_to=weights_file(dst).name if has_external_data(src) else "")
    try:
        backend.load(str(src), io, options).close()
    except StreetcascadeError as exc:
        raise CompileError(f"onnxruntime could not optimise {src.name}: {exc}") from None
    if not dst.exists():
        raise CompileError(f"onnxruntime did not write the optimised graph {dst}")
    return dst


def with_weights_file(built: BuiltGraph) -> BuiltGraph:
    """The engine's external weights file (graphs past 2 GiB) as a companion the manifest hashes."""
    from ..export import weights_file

    data = weights_file(built.path)
    if data.exists():
        built.companions.append(data)
    return built


class OnnxRuntimeTarget(Target):
    """cpu: quantize (optional) and optimise offline for this CPU. cuda ("ort-cuda", for
    operators with CUDA but not the TensorRT Python package): the graph at its precision (fp16
    converted like TensorRT's), optimised at load by the chosen execution provider (the CUDA
    provider, or ONNX Runtime's TensorRT provider with its caches next to the graph)."""

    judge_stages = True
    backend = ONNXRUNTIME
    precisions = ("fp32", "fp16", "int8-dynamic", "int8-static", "int4")
    suffix = ".onnx"
    CPU_PRECISIONS = ("fp32", "int8-dynamic", "int8-static", "int4")
    GPU_PRECISIONS = ("fp32", "fp16", "int8-static", "int4")

    def describe(self, config: CascadeConfig) -> TargetInfo:
        device = config.target.device
        if device == "cuda":
            from streetcascade.gpu import require_gpu

            gpu = require_gpu(what="the onnxruntime cuda target")
            provider = config.target.execution_provider
            return TargetInfo(name=config.target.name or f"{gpu.target_name}-ort-{provider}", backend=self.backend, device=device, arch=arch(),
                              sm=gpu.sm, gpu_name=gpu.name, driver_version=gpu.driver_version, cuda_version=gpu.runtime_version,
                              execution_provider=provider)
        if device != "cpu":
            raise ConfigError(f"target.device {device!r}: the onnxruntime target builds for cpu or cuda")
        return TargetInfo(name=config.target.name or default_target_name(device), backend=self.backend, device=device, arch=arch(), cpu_features=list(cpu_features()))

    def check_precision(self, stage, device: str = "cpu") -> None:
        super().check_precision(stage)
        allowed = self.GPU_PRECISIONS if device == "cuda" else self.CPU_PRECISIONS
        if stage.precision not in allowed:
            raise CompileError(f"stage {stage.name}: precision {stage.precision!r} is not built by the onnxruntime target on {device} "
                               f"(have: {', '.join(allowed)})")

    def build(self, job: BuildJob) -> BuiltGraph:
        precision = job.stage.precision
        if precision == "int4":
            return self.build_int4(job)
        if job.config.target.device == "cuda":
            return self.build_gpu_graph(job)
        if precision == "int8-static":
            from ..static_int8 import build_gated_static

            return BuiltGraph(job.out, build_gated_static(job))
        job.progress.step(f"{job.stage.name}: building {precision} graph for onnxruntime (offline optimisation)")
        src = job.raw
        if precision == "int8-dynamic":
            src = quantize_dynamic_int8(job.raw, job.raw.with_suffix(".int8.onnx"))
        return with_weights_file(BuiltGraph(optimize_offline(src, job.out, job.io, job.config.runtime)))


    @staticmethod
    def build_int4(job: BuildJob) -> BuiltGraph:
        """4-bit weights (MatMulNBits: AutoAWQ's own codes, or round to nearest), optimised
        offline for this CPU, or as it is for the CUDA provider (which optimises at load)."""
        from ..export import copy_graph
        from ..int4 import awq_checkpoint_of, build_int4_onnx

        cuda = job.config.target.device == "cuda"
        if cuda and job.config.target.execution_provider != "cuda":
            raise CompileError(f"stage {job.stage.name}: int4 (MatMulNBits, an ONNX Runtime contrib op) runs on its CUDA provider, not the "
                               f"{job.config.target.execution_provider} provider: set [target] execution_provider = \"cuda\"")
        # CUDA: the 4-bit graph is the engine (written there, with its weights file named after it).
        dst = job.out if cuda else job.raw.with_name(job.raw.name.replace(".raw.onnx", ".int4.tmp.onnx"))
        graph = build_int4_onnx(job, dst, awq_checkpoint_of(job.stage, job.config_path), embeddings=job.stage.int4_settings.embeddings == "int4")
        if not cuda:
            optimize_offline(graph.path, job.out, job.io, job.config.runtime)
        elif graph.path != job.out:  # nothing was converted: the float graph as it is
            copy_graph(graph.path, job.out)
        return with_weights_file(BuiltGraph(job.out, weight_quant=graph.report, awq_matched=graph.awq_matched))

    @staticmethod
    def build_gpu_graph(job: BuildJob) -> BuiltGraph:
        """The graph for a GPU execution provider: its precision's types, no CPU-specific rewrites."""
        from ..export import copy_graph
        from ..precision import graph_for_precision

        job.progress.step(f"{job.stage.name}: {job.stage.precision} graph for onnxruntime on cuda ({job.config.target.execution_provider} provider)")
        source, gate = graph_for_precision(job, ".onnx")
        return with_weights_file(BuiltGraph(copy_graph(source, job.out), gate))


TARGET = OnnxRuntimeTarget()

