"""TensorRT backend (TensorRT 10.x / 11.x Python API, cuda-python for memory and streams).

An engine is a deserialized `ICudaEngine` (one per .plan file, shared). A slot is one
execution context with its own CUDA stream, pinned host input/output buffers and device
input/output buffers, all allocated once at max_batch when the slot is made; the context's
scratch memory is USER_MANAGED and points into the calling thread's arena, which every engine
that thread runs shares (runtime/cuda.py `ArenaPool`): engines run one after another, so one
arena per slot, sized to the largest `device_memory_size_v2`, is enough.

Per request: copy the batch into the pinned input, then copy in + `execute_async_v3` + copy out
on the slot's stream. After the first plain run at a batch size, that sequence is captured in a
CUDA graph and later runs at that size replay it with one launch (launch overhead is most of a
batch-1 ViT's time on a fast GPU); a capture that fails is counted and the plain path stays.

Engines are valid for one GPU architecture (SM) and TensorRT major.minor: `check_target` refuses
a mismatch naming both. A TensorRT `Runtime` is only created after the CUDA runtime has found a
GPU: without one, TensorRT's objects segfault the process instead of raising.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import msgspec
import numpy as np

from streetcascade.errors import BackendUnavailable, EngineMismatch, InferenceError
from streetcascade.gpu import check_sm, require_gpu
from streetcascade.manifest import GraphIO, Manifest, MemoryAccount
from streetcascade.settings import RuntimeConfig

from .base import Backend, Engine, Slot, concrete_shape, host_bytes

try:
    import tensorrt as trt
except ImportError as exc:  # the `gpu` extra installs it (from NVIDIA's index)
    raise BackendUnavailable(f"TensorRT is not installed (pip install 'streetcascade[gpu]'): {exc}") from exc

from .. import cuda  # noqa: E402 - after the tensorrt check: both come with the gpu extra

log = logging.getLogger(__name__)


class TrtOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device: str = "cuda"
    gpu_index: int = 0
    cuda_graphs: bool = True


class CollectingLogger(trt.ILogger):
    """TensorRT's messages at WARNING and above, kept so errors can quote them."""

    def __init__(self):
        trt.ILogger.__init__(self)
        self.messages: list[str] = []

    def log(self, severity, msg):
        if int(severity) <= int(trt.ILogger.Severity.WARNING):
            self.messages.append(str(msg))
            log.debug("tensorrt: %s", msg)

    def last(self, n: int = 3) -> str:
        return " | ".join(self.messages[-n:]) or "no message from TensorRT"


def io_names(engine) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of an ICudaEngine, in its own order."""
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
    return inputs, outputs


class TrtSlot(Slot):
    def __init__(self, engine: "TrtEngine"):
        super().__init__(engine)
        io = engine.io
        self.context = engine.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise InferenceError(f"{engine.path}: TensorRT could not create an execution context: {engine.backend.logger.last()}")
        arena = engine.backend.arenas.for_this_thread()
        self.context.set_device_memory(arena.ptr, arena.nbytes)
        self.stream = cuda.Stream()
        self.pinned: dict[str, cuda.PinnedBuffer] = {}
        self.device: dict[str, cuda.DeviceBuffer] = {}
        for spec in [*io.inputs, *io.outputs]:
            shape = concrete_shape(spec, io.max_batch)
            self.pinned[spec.name] = cuda.PinnedBuffer(shape, spec.dtype)
            self.device[spec.name] = cuda.DeviceBuffer(self.pinned[spec.name].nbytes, f"{spec.name} of {Path(engine.path).name}")
            if not self.context.set_tensor_address(spec.name, self.device[spec.name].ptr):
                raise InferenceError(f"{engine.path}: set_tensor_address({spec.name}) refused")
        self._shape_batch = 0
        self._warm: set[int] = set()
        self.graphs: dict[int, cuda.GraphCapture | None] = {}

    def _bytes(self, name: str, batch: int) -> int:
        buf = self.pinned[name]
        return buf.nbytes // buf.shape[0] * batch

    def _set_batch(self, batch: int) -> None:
        if batch == self._shape_batch:
            return
        for spec in self.engine.io.inputs:
            if not self.context.set_input_shape(spec.name, concrete_shape(spec, batch)):
                raise InferenceError(f"{self.engine.path}: TensorRT refused batch {batch} for {spec.name}")
        self._shape_batch = batch

    def _enqueue(self, batch: int) -> None:
        io = self.engine.io
        for spec in io.inputs:
            cuda.copy_h2d(self.device[spec.name].ptr, self.pinned[spec.name], self._bytes(spec.name, batch), self.stream)
        if not self.context.execute_async_v3(self.stream.ptr):
            raise InferenceError(f"{self.engine.path}: execute_async_v3 failed: {self.engine.backend.logger.last()}")
        for spec in io.outputs:
            cuda.copy_d2h(self.pinned[spec.name], self.device[spec.name].ptr, self._bytes(spec.name, batch), self.stream)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.check_feeds(feeds)
        engine = self.engine
        for spec in engine.io.inputs:
            self.pinned[spec.name].array[:batch] = feeds[spec.name]
        graph = self.graphs.get(batch)
        if graph is not None:
            graph.launch()
            engine.stats["graph_launches"] += 1
        else:
            self._set_batch(batch)
            self._enqueue(batch)
            if batch in self._warm and batch not in self.graphs and engine.options.cuda_graphs:
                # Second run at this size: the context is warm, capture copy + execute + copy.
                self.stream.synchronize()
                captured, why = cuda.GraphCapture.try_make(self.stream, lambda: self._enqueue(batch))
                self.graphs[batch] = captured
                if captured is None:
                    engine.stats["graph_fallbacks"] += 1
                    log.warning("%s: CUDA graph capture at batch %d failed (%s); running without it", Path(engine.path).name, batch, why)
            self._warm.add(batch)
        self.stream.synchronize()
        return {spec.name: self.pinned[spec.name].array[:batch].copy() for spec in engine.io.outputs}

    def close(self) -> None:
        for g in self.graphs.values():
            if g is not None:
                g.close()
        self.graphs = {}
        for buf in [*self.pinned.values(), *self.device.values()]:
            buf.close()
        self.pinned, self.device = {}, {}
        self.stream.close()
        self.context = None


class TrtEngine(Engine):
    def __init__(self, path: str, io: GraphIO, options: TrtOptions, backend: "TensorRTBackend"):
        super().__init__(path, io)
        self.options = options
        self.backend = backend
        self.stats = {"graph_launches": 0, "graph_fallbacks": 0}
        data = Path(path).read_bytes()
        self.engine = backend.runtime().deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineMismatch(f"{path}: TensorRT cannot deserialize it ({backend.logger.last()}); rebuild it on this GPU and TensorRT version")
        inputs, outputs = io_names(self.engine)
        if inputs != [s.name for s in io.inputs] or outputs != [s.name for s in io.outputs]:
            raise EngineMismatch(f"{path}: engine has inputs {inputs} / outputs {outputs}, the manifest says "
                                 f"{[s.name for s in io.inputs]} / {[s.name for s in io.outputs]}")
        self.weights_bytes = len(data)
        self.scratch_bytes = int(self.engine.device_memory_size_v2)
        backend.arenas.reserve(self.scratch_bytes)

    def slot(self) -> TrtSlot:
        return TrtSlot(self)

    def memory(self) -> MemoryAccount:
        io_bytes = host_bytes([*self.io.inputs, *self.io.outputs], self.io.max_batch)
        return MemoryAccount(
            device="cuda",
            weights_bytes=self.weights_bytes,
            # Scratch (shared: the planner counts the largest once per slot) + device IO buffers.
            activations_bytes=self.scratch_bytes + io_bytes,
            host_buffers_bytes=io_bytes,  # pinned, per slot
            method="tensorrt-engine",
        )

    def close(self) -> None:
        self.engine = None


class TensorRTBackend(Backend):
    name = "tensorrt"
    Options = TrtOptions
    package = "tensorrt"

    def __init__(self):
        self.logger = CollectingLogger()
        self._runtime = None
        self._lock = threading.Lock()
        self.arenas = cuda.ArenaPool()

    def runtime(self):
        with self._lock:
            if self._runtime is None:
                require_gpu(what="the TensorRT backend")  # never create a Runtime without a GPU
                self._runtime = trt.Runtime(self.logger)
            return self._runtime

    @classmethod
    def options_for(cls, runtime: RuntimeConfig, device: str) -> TrtOptions:
        return TrtOptions(device="cuda", cuda_graphs=runtime.cuda_graphs)

    def load(self, path: str, io: GraphIO, options: TrtOptions) -> TrtEngine:
        return TrtEngine(path, io, options, self)

    def check_target(self, manifest: Manifest, engine_dir) -> None:
        super().check_target(manifest, engine_dir)  # arch, TensorRT major.minor
        check_sm(manifest, engine_dir)

    def close(self) -> None:
        self.arenas.close()
