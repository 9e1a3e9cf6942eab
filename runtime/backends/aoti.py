"""AOTInductor backend: loads a .pt2 package (compile/targets/aoti.py) with
`torch._inductor.aoti_load_package` and runs it. It needs PyTorch at run time, unlike the
ONNX Runtime and TensorRT backends; the registry imports it only when an engine set asks.

On a GPU each slot has its own CUDA stream and, per batch size, a pinned host input and a
device input. The first runs at a size are plain (warm-up on the slot's own stream: cuBLAS
handles and workspaces are per stream, AOTInductor folds its constants on the first run,
and none of that may happen under capture); then the model call is captured in a CUDA graph
(runtime/backends/torch_graphs.py: PyTorch's CUDAGraph API, thread-local capture mode, a
failed capture cleaned up so later compiles and engines in the process keep working) and
replayed with one launch. A capture that fails is counted and logged, and that size keeps the
plain path.

Graphs need the package loaded with `run_single_threaded=True` (PyTorch 2.7+): the default
AOTInductor runner synchronises its model container with CUDA events, which is not permitted
while a stream is capturing (the H200 run: "operation not permitted when stream is capturing").
A single-threaded runner must not be entered by two threads at once, so plain runs take the
engine's lock; graph replays do not touch the runner. With an older PyTorch the backend says
so once and runs without graphs. On a CPU it calls the model on the numpy input's tensor view.
"""

from __future__ import annotations

import contextlib
import inspect
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

from .torch_graphs import TorchGraphCapture  # noqa: E402 - after the torch check

log = logging.getLogger(__name__)

# Plain runs at a batch size before it is captured (warm-up on the slot's stream).
WARMUP_RUNS = 2


def single_threaded_loading() -> bool:
    """Whether this PyTorch's aoti_load_package takes run_single_threaded (2.7+), which CUDA
    graph capture of an AOTInductor model needs."""
    try:
        return "run_single_threaded" in inspect.signature(aoti_load_package).parameters
    except (TypeError, ValueError):
        return False


GRAPHS_UNSUPPORTED = ("PyTorch {version}: aoti_load_package has no run_single_threaded (PyTorch 2.7+), and the default "
                      "AOTInductor runner cannot be captured in a CUDA graph: CUDA graphs are off for aoti engines")


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
        self.tried = False  # a capture was attempted at this size (once: a failure is not retried)


class AotiSlot(Slot):
    def __init__(self, engine: "AotiEngine"):
        super().__init__(engine)
        self._batches: dict[int, _Batch] = {}
        self.stream = None
        self.capturer = None
        if engine.device.type == "cuda":
            self.stream = torch.cuda.Stream(device=engine.device)
            self.capturer = TorchGraphCapture(torch, engine.device, self.stream)

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
                with engine.lock:  # the single-threaded runner: one caller at a time
                    b.out = engine.model(b.device_in)
                b.runs += 1
                if b.runs >= WARMUP_RUNS and engine.graphs_enabled and not b.tried:
                    self._capture(batch, b)
            result = b.out.to("cpu", non_blocking=False)
        return result.numpy().astype(engine.io.outputs[0].dtype, copy=True)

    def _capture(self, batch: int, b: _Batch) -> None:
        engine = self.engine
        b.tried = True
        with engine.lock:
            graph, out, why = self.capturer.capture(lambda: engine.model(b.device_in))
        engine.stats["rng_repairs"] += self.capturer.repairs
        self.capturer.repairs = 0
        if graph is None:
            engine.stats["graph_fallbacks"] += 1
            log.warning("%s: CUDA graph capture at batch %d failed (%s); this size runs without a graph", engine.path, batch, why)
            return  # b.out holds this request's answer from the plain run
        b.graph, b.out = graph, out
        b.graph.replay()  # this request's input is already on the device
        engine.stats["graph_launches"] += 1

    def replay(self, batch: int) -> bool:
        """Replay the captured graph of `batch` alone, no copies, on the slot's stream: what
        bench.gpu times with CUDA events as the GPU-only time. False when that size has none."""
        b = self._batches.get(batch)
        if b is None or b.graph is None:
            return False
        with torch.cuda.stream(self.stream):
            b.graph.replay()
        return True

    def close(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
        self._batches = {}


class AotiEngine(Engine):
    def __init__(self, path: str, io: GraphIO, options: AotiOptions):
        super().__init__(path, io)
        self.options = options
        self.device = torch.device(f"cuda:{options.gpu_index}" if options.device == "cuda" else "cpu")
        # rng_repairs: failed captures after which PyTorch's CUDA generator had to be put right.
        self.stats = {"graph_launches": 0, "graph_fallbacks": 0, "rng_repairs": 0}
        self.lock = contextlib.nullcontext()  # a real lock when the runner is single-threaded (below)
        if options.device == "cpu" and options.intra_op_threads:
            torch.set_num_threads(options.intra_op_threads)
        # CUDA graphs: on a GPU, asked for, and loadable with a runner that can be captured.
        self.graphs_enabled = options.device == "cuda" and options.cuda_graphs
        kwargs = {}
        if self.graphs_enabled:
            if single_threaded_loading():
                kwargs["run_single_threaded"] = True
                self.lock = threading.Lock()
            else:
                self.graphs_enabled = False
                log.warning("%s: %s", path, GRAPHS_UNSUPPORTED.format(version=torch.__version__))
        before = self._used()
        try:
            self.model = aoti_load_package(path, **kwargs)
        except Exception as exc:
            raise EngineMismatch(f"{path}: AOTInductor cannot load it: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        self._weights_bytes = max(self._used() - before, 0)
        self._activations_bytes: int | None = None

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
                # What a slot holds at max_batch: the plain path's blocks the caching allocator
                # keeps, plus (with graphs) the graph's private pool: reserved memory, measured
                # through warm-up, capture and one replay.
                torch.cuda.synchronize(self.device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.device)
                base = torch.cuda.memory_reserved(self.device)
                with self.slot() as slot:
                    for _ in range(WARMUP_RUNS + 1 if self.graphs_enabled else 1):
                        slot.infer(example_feeds(self.io, self.io.max_batch))
                self._activations_bytes = int(max(torch.cuda.max_memory_reserved(self.device) - base, 0))
            else:
                self._activations_bytes = first_run_growth(self)
        return MemoryAccount(
            device=self.device.type,
            weights_bytes=self._weights_bytes,
            activations_bytes=self._activations_bytes,
            host_buffers_bytes=host_bytes([*self.io.inputs, *self.io.outputs], self.io.max_batch),
            method=("torch-cuda-reserved" + ("+graph-pool" if self.graphs_enabled else "")) if self.device.type == "cuda" else "rss-peak",
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
