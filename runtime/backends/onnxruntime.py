"""ONNX Runtime backend: one InferenceSession per engine (shared, thread-safe `run`), one IO
binding per slot with its output buffers allocated once, at max_batch, when the slot is made.

Graphs on disk are already optimised offline (compile.targets.onnxruntime, which runs this
backend with `save_optimized_to`), so loading skips the optimiser: that is what makes load fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import numpy as np

from streetcascade.errors import BackendUnavailable, BadInput, EngineMismatch, InferenceError, StreetcascadeError
from streetcascade.machine import cpu_features, physical_cores, rss_bytes
from streetcascade.manifest import GraphIO, Manifest, MemoryAccount
from streetcascade.settings import RuntimeConfig

from .base import Backend, Engine, Slot, example_feeds, host_bytes

try:
    import onnxruntime as ort
except ImportError as exc:  # the `cpu` or `cuda` extra installs it
    raise BackendUnavailable(f"onnxruntime is not installed (pip install 'streetcascade[cpu]' or '[cuda]'): {exc}") from exc

log = logging.getLogger(__name__)


class OrtOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device: Literal["cpu", "cuda"] = "cpu"
    intra_op_threads: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0 = one per core
    spin_wait: bool = True
    # Run ORT's full optimiser at load: for graphs not optimised offline (compile-time tools).
    optimize: bool = False
    # Write the optimised graph here (the offline optimisation step of compile); "" = don't.
    save_optimized_to: str = ""


def session_options(options: OrtOptions) -> "ort.SessionOptions":
    """Options tuned for batch-1 latency on a small CPU box.

    One intra-op thread per core (hyper-threads only add contention for GEMM-bound graphs),
    a sequential executor (our graphs are one chain), the memory arena and memory-pattern
    planning on (no allocation per call after the first at a given shape).
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads or physical_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    optimize = options.optimize or bool(options.save_optimized_to)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if options.save_optimized_to:
        so.optimized_model_filepath = options.save_optimized_to
        # ORT warns that an ENABLE_ALL graph may hold hardware-specific (NCHWc) kernels: that is
        # why the manifest records the CPU features and `check_target` compares them.
        so.log_severity_level = 3
    # Spinning keeps worker threads hot between ops (lower latency) at the price of CPU time.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin_wait else "0")
    if options.device != "cpu":
        # onnxruntime-gpu silently runs on the CPU when a CUDA library is missing: make it an error.
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return so


def providers_for(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailable(f"onnxruntime here has no CUDA provider (available: {', '.join(available)})")
        return ["CUDAExecutionProvider"]
    raise BadInput(f"unknown device {device!r} for onnxruntime (use cpu or cuda)")


class OrtSlot(Slot):
    def __init__(self, engine: "OrtEngine"):
        super().__init__(engine)
        self._binding = engine.session.io_binding()
        # Output buffers at max_batch, allocated once; a smaller batch binds a leading view.
        self.output_buffers = {s.name: np.empty([engine.io.max_batch, *s.shape[1:]], dtype=s.dtype) for s in engine.io.outputs}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.check_feeds(feeds)
        engine = self.engine
        for spec in engine.io.inputs:
            self._binding.bind_cpu_input(spec.name, np.ascontiguousarray(feeds[spec.name]))
        views = {name: buf[:batch] for name, buf in self.output_buffers.items()}
        for name, view in views.items():
            self._binding.bind_output(name, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)
        try:
            engine.session.run_with_iobinding(self._binding)
        except Exception as exc:  # onnxruntime raises its own (Fail, InvalidArgument, ...)
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        engine.runs += 1
        # Outputs are small (a logit per image): copy so callers never see a buffer reused later.
        return {name: view.copy() for name, view in views.items()}

    def close(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()


class OrtEngine(Engine):
    def __init__(self, path: str, io: GraphIO, options: OrtOptions):
        super().__init__(path, io)
        self.options = options
        self.runs = 0
        before = rss_bytes()
        try:
            self.session = ort.InferenceSession(path, sess_options=session_options(options), providers=providers_for(options.device))
        except StreetcascadeError:
            raise
        except Exception as exc:
            raise EngineMismatch(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from exc
        # Weights are inline in our graphs: the file size is a floor for what the session holds
        # (ORT may also pre-pack GEMM weights, which the RSS delta catches).
        self._weights_bytes = max(rss_bytes() - before, Path(path).stat().st_size)
        self._activations_bytes: int | None = None
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != [s.name for s in io.inputs] or names_out != [s.name for s in io.outputs]:
            raise EngineMismatch(
                f"{path}: graph has inputs {names_in} / outputs {names_out}, the manifest says "
                f"{[s.name for s in io.inputs]} / {[s.name for s in io.outputs]}"
            )

    def slot(self) -> OrtSlot:
        return OrtSlot(self)

    def memory(self) -> MemoryAccount:
        """Weights: the RSS growth of creating the session. Activations: the RSS growth of the
        first run at max_batch (ORT's arena keeps its peak), so measure on a fresh engine."""
        if self._activations_bytes is None:
            if self.runs:
                raise InferenceError(f"{self.path}: memory must be measured before the engine's first run (its arena is already grown)")
            before = rss_bytes()
            with self.slot() as slot:
                slot.infer(example_feeds(self.io, self.io.max_batch))
            self._activations_bytes = max(0, rss_bytes() - before)
        return MemoryAccount(
            device=self.options.device,
            weights_bytes=self._weights_bytes,
            activations_bytes=self._activations_bytes,
            host_buffers_bytes=host_bytes(self.io.outputs, self.io.max_batch),
            method="rss-delta",
        )

    def close(self) -> None:
        self.session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    Options = OrtOptions
    package = "onnxruntime"

    @classmethod
    def options_for(cls, runtime: RuntimeConfig, device: str) -> OrtOptions:
        return OrtOptions(device=device, intra_op_threads=runtime.intra_op_threads, spin_wait=runtime.spin_wait)

    def load(self, path: str, io: GraphIO, options: OrtOptions) -> OrtEngine:
        return OrtEngine(path, io, options)

    def check_target(self, manifest: Manifest, engine_dir) -> None:
        super().check_target(manifest, engine_dir)
        target = manifest.target
        if target.device == "cpu":
            missing = sorted(set(target.cpu_features) - set(cpu_features()))
            if missing:
                raise EngineMismatch(
                    f"{engine_dir}: built on a CPU with {', '.join(missing)}, which this CPU lacks; "
                    "recompile on this machine (`streetcascade compile`)"
                )
