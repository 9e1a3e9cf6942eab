"""AOTInductor backend: loads a .pt2 package (compile/targets/aoti.py) with
`torch._inductor.aoti_load_package` and runs it. It needs PyTorch at run time, unlike the
ONNX Runtime and TensorRT backends; the registry imports it only when an engine set asks.

On a GPU, each slot keeps per batch size a pinned host input, a device input and, after one
plain run at that size, a CUDA graph of copy-in + model + (device) output, replayed with one
launch; a capture that fails is counted and the plain path stays. On a CPU it calls the model
on the numpy input's tensor view.
"""

from __future__ import annotations

import logging
import threading

import msgspec
import numpy as np

from streetcascade.errors import BackendUnavailable, EngineMismatch, InferenceError
from streetcascade.gpu import check_sm
from streetcascade.machine import rss_bytes
from streetcascade.manifest import GraphIO, Manifest, MemoryAccount
from streetcascade.settings import RuntimeConfig

from .base import Backend, Engine, Slot, check_cpu_features, example_feeds, first_run_growth, host_bytes

try:
    import torch
    from torch._inductor import aoti_load_package
except ImportError as exc:
    raise BackendUnavailable(f"the aoti backend needs PyTorch 2.6+ with AOTInductor: {exc}") from exc

log = logging.getLogger(__name__)


class AotiOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device: str = "cpu"
    gpu_index: int = 0
    cuda_graphs: bool = True
    intra_op_threads: int = 0


class _Batch:
    """One batch size's buffers on a GPU slot, and its CUDA graph once captured."""

    def __init__(self, shape, dtype, device):
        self.host = torch.empty(shape, dtype=dtype, pin_memory=True)
        self.device_in = torch.empty(shape, dtype=dtype, device=device)
        self.out = None
        self.graph = None
        self.runs = 0


class AotiSlot(Slot):
    def __init__(self, engine: "AotiEngine"):
        super().__init__(engine)
        self._batches: dict[int, _Batch] = {}
        self.stream = torch.cuda.Stream(device=engine.device) if engine.device.type == "cuda" else None

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.check_feeds(feeds)
        engine = self.engine
        spec_in, spec_out = engine.io.inputs[0], engine.io.outputs[0]
        x = feeds[spec_in.name]
        try:
            if self.stream is None:
                with torch.no_grad():
                    out = engine.model(torch.from_numpy(np.ascontiguousarray(x)))
                return {spec_out.name: out.numpy().astype(spec_out.dtype, copy=True)}
            return {spec_out.name: self._infer_gpu(batch, x)}
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(f"{engine.path}: AOTInductor run failed: {exc}") from exc

    def _infer_gpu(self, batch: int, x: np.ndarray) -> np.ndarray:
        engine = self.engine
        b = self._batches.get(batch)
        if b is None:
            b = self._batches[batch] = _Batch(x.shape, torch.from_numpy(x[:1]).dtype, engine.device)
        b.host.numpy()[...] = x
        with torch.cuda.stream(self.stream), torch.no_grad():
            b.device_in.copy_(b.host, non_blocking=True)
            if b.graph is not None:
                b.graph.replay()
                engine.stats["graph_launches"] += 1
            else:
                b.out = engine.model(b.device_in)
                b.runs += 1
                if b.runs == 2 and engine.options.cuda_graphs:  # warm at this size: capture
                    self.stream.synchronize()
                    try:
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph, stream=self.stream):
                            b.out = engine.model(b.device_in)
                        b.graph = graph
                        b.graph.replay()
                        engine.stats["graph_launches"] += 1
                    except Exception as exc:  # noqa: BLE001 - any capture failure: keep the plain path
                        engine.stats["graph_fallbacks"] += 1
                        log.warning("%s: CUDA graph capture at batch %d failed (%s); running without it", engine.path, batch, exc)
                        b.out = engine.model(b.device_in)
            result = b.out.to("cpu", non_blocking=False)
        return result.numpy().astype(engine.io.outputs[0].dtype, copy=True)

    def close(self) -> None:
        self._batches = {}


class AotiEngine(Engine):
    def __init__(self, path: str, io: GraphIO, options: AotiOptions):
        super().__init__(path, io)
        self.options = options
        self.device = torch.device(f"cuda:{options.gpu_index}" if options.device == "cuda" else "cpu")
        self.stats = {"graph_launches": 0, "graph_fallbacks": 0}
        if options.device == "cpu" and options.intra_op_threads:
            torch.set_num_threads(options.intra_op_threads)
        before = self._used()
        try:
            self.model = aoti_load_package(path)
        except Exception as exc:
            raise EngineMismatch(f"{path}: AOTInductor cannot load it: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        self._weights_bytes = max(self._used() - before, 0)
        self._activations_bytes: int | None = None
        self._lock = threading.Lock()

    def _used(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.memory_allocated(self.device))
        return rss_bytes()

    def slot(self) -> AotiSlot:
        return AotiSlot(self)

    def memory(self) -> MemoryAccount:
        if self._activations_bytes is None:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
                base = torch.cuda.memory_allocated(self.device)
                with self.slot() as slot:
                    slot.infer(example_feeds(self.io, self.io.max_batch))
                self._activations_bytes = int(torch.cuda.max_memory_allocated(self.device) - base)
            else:
                self._activations_bytes = first_run_growth(self, rss_bytes)
        return MemoryAccount(
            device=self.device.type,
            weights_bytes=self._weights_bytes,
            activations_bytes=self._activations_bytes,
            host_buffers_bytes=host_bytes([*self.io.inputs, *self.io.outputs], self.io.max_batch),
            method="torch-cuda-allocator" if self.device.type == "cuda" else "rss-delta",
        )

    def close(self) -> None:
        self.model = None


class AotiBackend(Backend):
    name = "aoti"
    Options = AotiOptions
    package = "torch"

    @classmethod
    def options_for(cls, runtime: RuntimeConfig, device: str) -> AotiOptions:
        return AotiOptions(device=device, cuda_graphs=runtime.cuda_graphs, intra_op_threads=runtime.intra_op_threads)

    def load(self, path: str, io: GraphIO, options: AotiOptions) -> AotiEngine:
        if options.device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"{path}: built for a GPU, and PyTorch sees none here")
        return AotiEngine(path, io, options)

    def check_target(self, manifest: Manifest, engine_dir) -> None:
        super().check_target(manifest, engine_dir)  # arch, torch major.minor
        target = manifest.target
        if target.device == "cuda":
            check_sm(manifest, engine_dir)
        else:
            check_cpu_features(manifest, engine_dir)
