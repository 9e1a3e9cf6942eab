"""ONNX Runtime backend: one InferenceSession per engine (shared, thread-safe `run`), one
IO binding per slot with output buffers preallocated per batch size.

Graphs on disk are already optimised offline (see compile.targets.onnxruntime), so loading
skips the optimiser: that is what makes load fast.
"""

from __future__ import annotations

import logging

import numpy as np

from streetcascade.errors import BackendUnavailable, BadInput, EngineMismatch, InferenceError
from streetcascade.machine import physical_cores

from .base import TensorSpec

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
    raise BackendUnavailable(f"onnxruntime is not installed: {exc}") from exc

log = logging.getLogger(__name__)


def session_options(intra_op_threads: int = 0, optimize: bool = False, spin: bool = True) -> "ort.SessionOptions":
    """Options tuned for batch-1 latency on a small CPU box.

    One intra-op thread per core (hyper-threads only add contention for GEMM-bound graphs),
    a sequential executor (our graphs are one chain), the memory arena and memory-pattern
    planning on (no allocation per call after the first at a given shape).
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads or physical_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    # Spinning keeps worker threads hot between ops (lower latency) at the price of CPU time.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
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


class OrtSlot:
    def __init__(self, engine: "OrtEngine"):
        self._engine = engine
        self._binding = engine.session.io_binding()
        self._outputs: dict[int, dict[str, np.ndarray]] = {}  # batch size -> preallocated outputs

    def _output_buffers(self, batch: int) -> dict[str, np.ndarray]:
        buffers = self._outputs.get(batch)
        if buffers is None:
            buffers = {}
            for spec in self._engine.outputs:
                shape = [batch if isinstance(d, str) else d for d in spec.shape]
                buffers[spec.name] = np.empty(shape, dtype=spec.dtype)
            self._outputs[batch] = buffers
        return buffers

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        engine = self._engine
        batch = None
        for spec in engine.inputs:
            if spec.name not in feeds:
                raise BadInput(f"missing input {spec.name!r}")
            x = feeds[spec.name]
            if x.dtype != np.dtype(spec.dtype):
                raise BadInput(f"input {spec.name!r}: dtype {x.dtype}, the engine takes {spec.dtype}")
            fixed = [d for d in spec.shape[1:]]
            if list(x.shape[1:]) != fixed:
                raise BadInput(f"input {spec.name!r}: shape {list(x.shape)}, the engine takes [batch, {', '.join(map(str, fixed))}]")
            batch = x.shape[0]
            self._binding.bind_cpu_input(spec.name, np.ascontiguousarray(x))
        buffers = self._output_buffers(batch)
        for name, buf in buffers.items():
            self._binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        try:
            engine.session.run_with_iobinding(self._binding)
        except Exception as exc:  # onnxruntime raises its own (Fail, InvalidArgument, ...)
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        # Outputs are tiny (a logit per image): copy so callers never see a buffer reused later.
        return {name: buf.copy() for name, buf in buffers.items()}

    def close(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._outputs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OrtEngine:
    def __init__(self, path: str, inputs: list[TensorSpec], outputs: list[TensorSpec], options: dict):
        device = options.get("device", "cpu")
        so = session_options(int(options.get("intra_op_threads", 0)), optimize=bool(options.get("optimize", False)), spin=bool(options.get("spin", True)))
        if device != "cpu":
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        try:
            self.session = ort.InferenceSession(path, sess_options=so, providers=providers_for(device))
        except (BackendUnavailable, BadInput):
            raise
        except Exception as exc:
            raise EngineMismatch(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from exc
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != [s.name for s in inputs] or names_out != [s.name for s in outputs]:
            raise EngineMismatch(
                f"{path}: graph has inputs {names_in} / outputs {names_out}, the manifest says "
                f"{[s.name for s in inputs]} / {[s.name for s in outputs]}"
            )
        self.path = path
        self.inputs = inputs
        self.outputs = outputs

    def slot(self) -> OrtSlot:
        return OrtSlot(self)

    def close(self) -> None:
        self.session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def load(self, path: str, inputs: list[TensorSpec], outputs: list[TensorSpec], options: dict) -> OrtEngine:
        return OrtEngine(path, inputs, outputs, options)
