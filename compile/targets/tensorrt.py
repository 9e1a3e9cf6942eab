"""TensorRT target: ONNX -> serialized engine (.plan) for this GPU type, TensorRT 10.x / 11.x.

Precision lives in the ONNX graph (TensorRT 11 builds strongly typed networks only; it has no
FP16/INT8 builder flags and no calibrator): compile/precision.py gives the graph whose types say
the precision (fp16 converted, int8-static the gated Q/DQ graph). One optimisation profile per input: batch 1
(optimised for) to max_batch. The timing cache is kept per GPU type and TensorRT version under
`<engines_dir>/.timing-cache/` and reused, so rebuilding is fast. The built engine is then
loaded through runtime/backends/tensorrt.py by the pipeline for its memory figures and its
parity against the PyTorch reference, like every target's.

Builder API names used here exist in both TensorRT 10.x and 11.x (tests/data/tensorrt_api.json,
extracted from NVIDIA's binding sources; tests run this code against a stand-in module that
has exactly those names).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from streetcascade.config import CascadeConfig
from streetcascade.errors import BackendUnavailable, CompileError
from streetcascade.gpu import require_gpu
from streetcascade.machine import arch
from streetcascade.manifest import BuildInfo, GraphIO, TargetInfo

from ..precision import graph_for_precision
from .base import BuildJob, BuiltGraph, Target

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_BYTES = 4 << 30


def import_tensorrt():
    try:
        import tensorrt  # noqa: PLC0415 - optional, GPU build machines only
    except ImportError as exc:
        raise BackendUnavailable(f"TensorRT is not installed (pip install 'streetcascade[gpu]'): {exc}") from None
    return tensorrt


def network_flags(trt) -> int:
    """Strongly typed networks: a flag in 10.x (required for FP16 from the graph), always on
    and ignored in 11.x. Names, never literal values: 11.x renumbered the enum."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def batch_profile(io: GraphIO) -> dict[str, list[list[int]]]:
    """Per input: [min, opt, max] shapes, batch 1 / 1 / max_batch (batch 1 is the latency case)."""
    profiles = {}
    for spec in io.inputs:
        rest = list(spec.shape[1:])
        if any(isinstance(d, str) for d in rest):
            raise CompileError(f"input {spec.name}: only the batch axis may be dynamic for TensorRT, got {spec.shape}")
        profiles[spec.name] = [[1, *rest], [1, *rest], [io.max_batch, *rest]]
    return profiles


def build_engine(trt, logger, onnx_path: Path, out: Path, io: GraphIO, workspace_bytes: int, timing_cache: Path | None) -> BuildInfo:
    """Parse `onnx_path`, build a serialized engine into `out`, update `timing_cache`."""
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise CompileError(f"TensorRT cannot parse {onnx_path.name}: {'; '.join(errors) or logger.last()}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if names != [s.name for s in io.inputs]:
        raise CompileError(f"{onnx_path.name}: network inputs {names}, the graph declares {[s.name for s in io.inputs]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    profiles = batch_profile(io)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profiles.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CompileError(f"TensorRT could not build {onnx_path.name}: {logger.last()}")
    data = bytes(serialized)
    out.write_bytes(data)
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        raise CompileError(f"TensorRT built {out.name} but cannot load it back: {logger.last()}")
    return BuildInfo(
        builder=f"tensorrt {trt.__version__}",
        profiles=profiles,
        device_memory_bytes=int(engine.device_memory_size_v2),
        weights_bytes=len(data),
        build_seconds=round(time.perf_counter() - t0, 2),
        timing_cache=timing_cache.name if timing_cache is not None else "",
    )


def timing_cache_path(job: BuildJob, trt_version: str, target_name: str) -> Path:
    from streetcascade.config import resolve_relative

    major_minor = ".".join(trt_version.split(".")[:2])
    return resolve_relative(job.config_path, job.config.engines_dir) / ".timing-cache" / f"{target_name}-trt{major_minor}.cache"


class TensorRTTarget(Target):
    backend = "tensorrt"
    precisions = ("fp32", "fp16", "int8-static", "fp8")
    suffix = ".plan"

    def describe(self, config: CascadeConfig) -> TargetInfo:
        gpu = require_gpu(what="the TensorRT target")
        from streetcascade.machine import version_of

        return TargetInfo(
            name=config.target.name or gpu.target_name,
            backend=self.backend,
            device="cuda",
            arch=arch(),
            sm=gpu.sm,
            gpu_name=gpu.name,
            driver_version=gpu.driver_version,
            cuda_version=gpu.runtime_version or (version_of("cuda-bindings") or ""),
        )

    def build(self, job: BuildJob) -> BuiltGraph:
        trt = import_tensorrt()
        from streetcascade.runtime.backends.tensorrt import CollectingLogger

        gpu = require_gpu(what="the TensorRT target")
        source, gate = graph_for_precision(job, ".plan")
        cache = timing_cache_path(job, trt.__version__, job.config.target.name or gpu.target_name)
        job.progress.step(f"{job.stage.name}: building a {job.stage.precision} TensorRT {trt.__version__} engine for {gpu.name} "
                          f"(batch 1..{job.io.max_batch}; timing cache {cache.name})")
        info = build_engine(trt, CollectingLogger(), source, job.out, job.io, job.config.target.workspace_bytes or DEFAULT_WORKSPACE_BYTES, cache)
        log.info("%s: built in %.1f s, %d MiB, scratch %d MiB", job.out.name, info.build_seconds, info.weights_bytes >> 20, info.device_memory_bytes >> 20)
        return BuiltGraph(job.out, gate, info)


TARGET = TensorRTTarget()

__all__ = ["TARGET", "TensorRTTarget", "batch_profile", "build_engine", "network_flags"]
