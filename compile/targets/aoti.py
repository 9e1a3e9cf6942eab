"""AOTInductor target: the family's PyTorch module -> `torch.export` (batch 1..max_batch) ->
`torch._inductor.aoti_compile_and_package` -> one .pt2 package per device type, loaded by
runtime/backends/aoti.py (`aoti_load_package`, CUDA-graph replay on a GPU).

The GPU target we can measure on machines that have PyTorch and CUDA but no TensorRT (the H200
test machine: CUDA 13, PyTorch 2.11); it also builds for the CPU (tests, and CPU boxes with a
C++ compiler), where the package is compiled for this CPU's ISA. Precision: fp32, or fp16 on a
GPU (the module in half precision, the logit returned as float32). Unlike the ONNX targets it
compiles from PyTorch, so the exported ONNX graph is not used; parity is still checked against
the family's independent reference, through the backend, like every target.
"""

from __future__ import annotations

import logging
import time

from streetcascade.config import CascadeConfig
from streetcascade.errors import BackendUnavailable, CompileError, ConfigError
from streetcascade.machine import arch, cpu_features
from streetcascade.manifest import BuildInfo, GraphIO, TargetInfo

from .base import BuildJob, BuiltGraph, Target

log = logging.getLogger(__name__)


def export_program(module, io: GraphIO, device: str, half: bool):
    """torch.export of `module` on `device`, the batch axis dynamic in 1..max_batch."""
    import torch

    class Compiled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixels):
            return self.inner(pixels).float()

    inner = module.to(device).eval()
    if half:
        inner = inner.half()
    wrapped = Compiled(inner).eval()
    spec = io.inputs[0]
    if len(io.inputs) != 1:
        raise CompileError(f"the aoti target compiles one-input graphs, got {[s.name for s in io.inputs]}")
    example_batch = min(2, io.max_batch)  # 2, not 1: export specialises a size-1 axis
    example = torch.zeros([example_batch, *spec.shape[1:]], dtype=getattr(torch, spec.dtype), device=device)
    dynamic = None
    if io.max_batch > 1:
        dynamic = {"pixels": {0: torch.export.Dim("batch", min=1, max=io.max_batch)}}
    with torch.no_grad():
        return torch.export.export(wrapped, (example,), dynamic_shapes=dynamic)


class AotiTarget(Target):
    backend = "aoti"
    precisions = ("fp32", "fp16")
    suffix = ".pt2"
    needs_onnx = False

    def describe(self, config: CascadeConfig) -> TargetInfo:
        device = config.target.device
        if device == "cuda":
            from streetcascade.gpu import require_gpu

            gpu = require_gpu(what="the aoti target on cuda")
            return TargetInfo(name=config.target.name or f"{gpu.target_name}-aoti", backend=self.backend, device=device, arch=arch(),
                              sm=gpu.sm, gpu_name=gpu.name, driver_version=gpu.driver_version, cuda_version=gpu.runtime_version)
        if device != "cpu":
            raise ConfigError(f"target.device {device!r}: the aoti target builds for cpu or cuda")
        return TargetInfo(name=config.target.name or f"cpu-{arch()}-aoti", backend=self.backend, device=device, arch=arch(), cpu_features=list(cpu_features()))

    def check_precision(self, stage, device: str = "cpu") -> None:
        super().check_precision(stage, device)
        if stage.precision == "fp16" and device != "cuda":
            raise CompileError(f"stage {stage.name}: fp16 is built by the aoti target on cuda only")

    def build(self, job: BuildJob) -> BuiltGraph:
        try:
            import torch
            from torch._inductor import aoti_compile_and_package
        except ImportError as exc:
            raise BackendUnavailable(f"the aoti target needs PyTorch with AOTInductor (2.6+): {exc}") from None
        if job.graph is None:
            raise CompileError("the aoti target compiles the family's PyTorch module, and none was given")
        device = job.config.target.device
        half = job.stage.precision == "fp16"
        job.progress.step(f"{job.stage.name}: torch.export + AOTInductor for {device} ({job.stage.precision}, batch 1..{job.io.max_batch}); "
                          "compiling C++/CUDA takes a minute or more")
        t0 = time.perf_counter()
        try:
            program = export_program(job.graph.module, job.io, device, half)
            path = aoti_compile_and_package(program, package_path=str(job.out))
        except Exception as exc:
            raise CompileError(f"AOTInductor could not compile {job.stage.name}: {type(exc).__name__}: {str(exc)[:500]}") from exc
        finally:
            job.graph.module.to("cpu").float()  # the parity reference and later graphs expect it unchanged
        spec = job.io.inputs[0]
        rest = list(spec.shape[1:])
        info = BuildInfo(
            builder=f"torch {torch.__version__} aoti",
            profiles={spec.name: [[1, *rest], [1, *rest], [job.io.max_batch, *rest]]},
            weights_bytes=sum(p.numel() * (2 if half else 4) for p in job.graph.module.parameters()),
            build_seconds=round(time.perf_counter() - t0, 2),
        )
        log.info("%s: AOTInductor package in %.1f s", path, info.build_seconds)
        return BuiltGraph(job.out, None, info)


TARGET = AotiTarget()
