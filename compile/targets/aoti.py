"""AOTInductor target: the family's PyTorch module -> `torch.export` (batch 1..max_batch) ->
`torch._inductor.aoti_compile_and_package` -> one .pt2 package per device type, loaded by
runtime/backends/aoti.py (`aoti_load_package`, CUDA-graph replay on a GPU).

The GPU target we can measure on machines that have PyTorch and CUDA but no TensorRT (the H200
test machine: CUDA 13, PyTorch 2.11); it also builds for the CPU (tests, and CPU boxes with a
C++ compiler), where the package is compiled for this CPU's ISA. Unlike the ONNX targets it
compiles from PyTorch, so the exported ONNX graph is not used; parity is still checked against
the family's independent reference, through the backend, like every target.

Precision: fp32; fp16 on a GPU (the module in half precision, the logit returned as float32);
fp8 on a GPU with FP8 tensor cores (SM 8.9+): the transformer blocks' linear layers in
float8_e4m3fn with dynamic activation scales (compile/fp8.py), the rest bf16, gated against
the FP32 reference on the validation split like INT8 (flips, MCC, accuracy, AUC), refused
elsewhere with the SM named.

Inductor options: freezing (weights become constants, so Inductor folds what depends only on
them and picks weight layouts at compile time; if a PyTorch cannot freeze the module, it is
built without, and the manifest says so), and with `[target] autotune = true` max-autotune
(GEMM and fused-kernel configurations timed on this GPU: minutes longer). CUDA graphs are not
Inductor's here: the backend captures each slot's graphs itself (needs `run_single_threaded`,
PyTorch 2.7+; the manifest notes whether this PyTorch has it).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from streetcascade.config import CascadeConfig
from streetcascade.errors import BackendUnavailable, CompileError, ConfigError
from streetcascade.machine import arch, cpu_features
from streetcascade.manifest import AccuracyGate, BuildInfo, GraphIO, TargetInfo

from .base import BuildJob, BuiltGraph, Target

log = logging.getLogger(__name__)

REFERENCE_CHUNK = 16  # images per call of the FP32 reference when gating fp8


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


def inductor_options(autotune: bool) -> dict:
    options = {"freezing": True}
    if autotune:
        options["max_autotune"] = True
    return options


def compile_package(program, out, options: dict) -> tuple[str, list[str]]:
    """aoti_compile_and_package with `options`; without freezing if it cannot freeze. Returns
    (package path, notes for the manifest)."""
    from torch._inductor import aoti_compile_and_package

    try:
        return aoti_compile_and_package(program, package_path=str(out), inductor_configs=dict(options)), []  # it adds its own keys
    except Exception as exc:
        if not options.get("freezing"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        note = f"Inductor freezing failed ({type(exc).__name__}: {first}); built without freezing"
        log.warning("%s: %s", out, note)
        return aoti_compile_and_package(program, package_path=str(out), inductor_configs={**options, "freezing": False}), [note]


def graphs_note() -> str:
    """What this PyTorch means for the backend's CUDA graphs (recorded in the manifest)."""
    import torch

    from streetcascade.runtime.backends.aoti import GRAPHS_UNSUPPORTED, single_threaded_loading

    if single_threaded_loading():
        return (f"CUDA graphs: PyTorch {torch.__version__} loads the package with run_single_threaded=True; each slot captures "
                "one graph per batch size after two warm-up runs ([runtime] cuda_graphs)")
    return GRAPHS_UNSUPPORTED.format(version=torch.__version__)


class AotiTarget(Target):
    backend = "aoti"
    precisions = ("fp32", "fp16", "fp8")
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
        if stage.precision == "fp8":
            from ..fp8 import MIN_SM, has_fp8

            need = f"SM {MIN_SM[0]}.{MIN_SM[1]}+: Ada, Hopper, Blackwell"
            if device != "cuda":
                raise CompileError(f"stage {stage.name}: fp8 is built by the aoti target on an NVIDIA GPU with FP8 tensor cores ({need}); "
                                   "this build is for the CPU (target.device = \"cpu\")")
            from streetcascade.gpu import require_gpu

            gpu = require_gpu(what="fp8 on the aoti target")
            if not has_fp8(gpu.sm):
                raise CompileError(f"stage {stage.name}: fp8 needs FP8 tensor cores ({need}); this GPU is SM {gpu.sm} ({gpu.name}): "
                                   "use fp16")

    def build(self, job: BuildJob) -> BuiltGraph:
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable(f"the aoti target needs PyTorch with AOTInductor (2.6+): {exc}") from None
        if job.graph is None:
            raise CompileError("the aoti target compiles the family's PyTorch module, and none was given")
        device = job.config.target.device
        precision = job.stage.precision
        cal = job.config.calibration
        if precision == "fp8" and (cal is None or not cal.has_data()):
            raise ConfigError(f"stage {job.stage.name}: fp8 is gated against FP32 on labelled data: add a [calibration] table with "
                              "`data = \"FOLDER\"` (roadwork/ + no_roadwork/) or `parquet = [\"FILE.parquet\"]`")
        notes = [graphs_note()] if device == "cuda" else []
        module, quantized, granularity = job.graph.module, [], ""
        if precision == "fp8":
            from streetcascade.gpu import require_gpu

            from ..fp8 import granularity_for, to_float8

            granularity = granularity_for(require_gpu().sm) if device == "cuda" else "rowwise"
            module, quantized = to_float8(module, granularity)
            notes.append(f"fp8: {len(quantized)} linear layers in float8_e4m3fn ({granularity} scales, activations scaled at run time), "
                         "the rest bf16")
        options = inductor_options(job.config.target.autotune)
        job.progress.step(f"{job.stage.name}: torch.export + AOTInductor for {device} ({precision}, batch 1..{job.io.max_batch}; "
                          f"{', '.join(k for k, v in options.items() if v)}); compiling C++/CUDA takes a minute or more")
        t0 = time.perf_counter()
        try:
            program = export_program(module, job.io, device, precision == "fp16")
            weights = sum(t.numel() * t.element_size() for t in [*program.parameters(), *program.buffers()])
            path, compile_notes = compile_package(program, job.out, options)
            notes += compile_notes or [f"AOTInductor built with {', '.join(k for k, v in options.items() if v)}"]
        except Exception as exc:
            raise CompileError(f"AOTInductor could not compile {job.stage.name}: {type(exc).__name__}: {str(exc)[:500]}") from exc
        finally:
            job.graph.module.to("cpu").float()  # the parity reference and later graphs expect it unchanged
        spec = job.io.inputs[0]
        rest = list(spec.shape[1:])
        info = BuildInfo(
            builder=f"torch {torch.__version__} aoti",
            profiles={spec.name: [[1, *rest], [1, *rest], [job.io.max_batch, *rest]]},
            weights_bytes=int(weights),
            build_seconds=round(time.perf_counter() - t0, 2),
        )
        log.info("%s: AOTInductor package in %.1f s", path, info.build_seconds)
        gate = self._gate_fp8(job, len(quantized), granularity) if precision == "fp8" else None
        return BuiltGraph(job.out, gate, info, notes=notes)

    def _gate_fp8(self, job: BuildJob, quantized: int, granularity: str) -> AccuracyGate:
        """The fp8 package (through the backend, batch 1 and max_batch) against the FP32
        PyTorch reference on the validation split: the INT8 gate's figures and limits."""
        from .. import accuracy_gate as gate_mod
        from ..static_int8 import load_split_images

        stage, config, progress = job.stage, job.config, job.progress
        cal = config.calibration
        val, images = load_split_images(job.config_path, config, "validation", cal.validation_samples, stage.input_size, progress)
        progress.step(f"{stage.name}: fp8 gate: the FP32 PyTorch reference and the fp8 package on {len(val)} validation challenges")
        fp32 = np.concatenate([np.asarray(job.graph.reference(images[i:i + REFERENCE_CHUNK]), dtype=np.float64).reshape(-1)
                               for i in range(0, len(images), REFERENCE_CHUNK)])
        gates = [gate_mod.compare(fp32, logits, val.labels, method=f"fp8-dynamic-{granularity}", n_calibration=0, limits=cal,
                                  quantized_nodes=quantized, reference="pytorch-fp32")
                 for logits in gate_mod.engine_logits_each_batch(job.out, job.io, images, config.runtime, backend_name=self.backend,
                                                                 device=config.target.device)]
        return gate_mod.enforce_worst(stage.name, gates, "fp8", [job.out], progress)


TARGET = AotiTarget()
