"""A stand-in for `cuda.bindings.runtime` that simulates one GPU in host memory.

Same function names and result-tuple convention as the real bindings (tests check the names
against the installed cuda-bindings): every call returns (error,) or (error, value...).
"Device" and pinned allocations are real ctypes buffers, so copies move real bytes; work put
on a stream runs at once, or, while the stream is being captured, is recorded into a graph
that `cudaGraphLaunch` replays. Kernels come from the fake TensorRT (`enqueue`).

Failed captures are simulated the ways a real GPU produces them (`fail_capture`):
- "end": cudaStreamEndCapture reports an error and returns no graph (True means this);
- "invalidate": the first copy enqueued under capture is refused (as CUDA refuses an unsafe
  call) and invalidates the capture: EndCapture returns cudaErrorStreamCaptureInvalidated;
- "instantiate": the graph captures but cudaGraphInstantiate fails.
`failing_captures` captures fail (then they succeed: a later engine in the same process).
Like the real runtime, every failed call records the thread's last error until
cudaGetLastError reads and clears it, and graphs are counted so a leak shows.
"""

from __future__ import annotations

import ctypes
import enum
import types
from dataclasses import dataclass, field


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorIllegalState = 401
    cudaErrorInsufficientDriver = 35


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaStreamCaptureStatus(enum.IntEnum):
    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


OK = (cudaError_t.cudaSuccess,)


@dataclass
class _Stream:
    id: int
    capturing: list | None = None
    invalidated: bool = False

    def __int__(self):
        return self.id


@dataclass
class _Graph:
    ops: list = field(default_factory=list)


@dataclass
class _Props:
    name: bytes = b"NVIDIA GeForce RTX 4090"
    major: int = 8
    minor: int = 9
    totalGlobalMem: int = 24 << 30


class FakeCuda:
    """State of the simulated GPU; `module()` is what replaces cuda.bindings.runtime."""

    def __init__(self, device_bytes: int = 24 << 30, gpus: int = 1, fail_capture: bool | str = False, failing_captures: int = 1 << 30,
                 name: str = "NVIDIA GeForce RTX 4090", sm: tuple[int, int] = (8, 9)):
        self.props = _Props(name=name.encode(), major=sm[0], minor=sm[1], totalGlobalMem=device_bytes)
        self.device_bytes = device_bytes
        self.gpus = gpus
        self.fail_capture = "end" if fail_capture is True else fail_capture
        self.failing_captures = failing_captures
        self.last_error = cudaError_t.cudaSuccess
        self.live_graphs = 0
        self.capture_modes: list[int] = []
        self.buffers: dict[int, ctypes.Array] = {}
        self.device_allocated = 0
        self.streams: dict[int, _Stream] = {}
        self.launches = 0
        self.calls: list[str] = []

    # -- the API --
    def _fail(self, err):
        self.last_error = err
        return (err, None)

    def _failing(self, how: str) -> bool:
        return self.fail_capture == how and self.failing_captures > 0

    def _alloc(self, n):
        buf = ctypes.create_string_buffer(int(n))
        ptr = ctypes.addressof(buf)
        self.buffers[ptr] = buf
        return ptr

    def cudaMalloc(self, n):
        if self.device_allocated + n > self.device_bytes:
            return (cudaError_t.cudaErrorMemoryAllocation, None)
        self.device_allocated += n
        return (cudaError_t.cudaSuccess, self._alloc(n))

    def cudaFree(self, ptr):
        buf = self.buffers.pop(int(ptr), None)
        if buf is not None:
            self.device_allocated -= len(buf)
        return OK

    def cudaHostAlloc(self, n, flags):
        return (cudaError_t.cudaSuccess, self._alloc(n))

    def cudaFreeHost(self, ptr):
        self.buffers.pop(int(ptr), None)
        return OK

    def cudaStreamCreateWithFlags(self, flags):
        self._next_stream = getattr(self, "_next_stream", 0) + 1
        s = _Stream(self._next_stream)
        self.streams[s.id] = s
        return (cudaError_t.cudaSuccess, s)

    def cudaStreamDestroy(self, stream):
        self.streams.pop(int(stream), None)
        return OK

    def cudaStreamSynchronize(self, stream):
        return OK

    def enqueue(self, stream, fn):
        """Put `fn` on the stream: run now, or record it while capturing."""
        s = self.streams[int(stream)]
        if s.capturing is not None:
            s.capturing.append(fn)
        else:
            fn()

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self.calls.append(f"memcpy {kind.name}")
        s = self.streams[int(stream)]
        if s.capturing is not None and self._failing("invalidate"):
            s.invalidated = True  # CUDA refuses the call and invalidates the whole capture
            return self._fail(cudaError_t.cudaErrorStreamCaptureUnsupported)[:1]
        self.enqueue(stream, lambda: ctypes.memmove(int(dst), int(src), int(n)))
        return OK

    def cudaStreamBeginCapture(self, stream, mode):
        s = self.streams[int(stream)]
        if s.capturing is not None:
            return self._fail(cudaError_t.cudaErrorIllegalState)[:1]
        s.capturing, s.invalidated = [], False
        self.capture_modes.append(int(mode))
        return OK

    def cudaStreamIsCapturing(self, stream):
        s = self.streams[int(stream)]
        if s.capturing is None:
            return (cudaError_t.cudaSuccess, cudaStreamCaptureStatus.cudaStreamCaptureStatusNone)
        status = cudaStreamCaptureStatus.cudaStreamCaptureStatusInvalidated if s.invalidated else cudaStreamCaptureStatus.cudaStreamCaptureStatusActive
        return (cudaError_t.cudaSuccess, status)

    def cudaStreamEndCapture(self, stream):
        s = self.streams[int(stream)]
        if s.capturing is None:
            return self._fail(cudaError_t.cudaErrorIllegalState)
        ops, s.capturing = s.capturing, None
        if s.invalidated:
            self.failing_captures -= 1
            return self._fail(cudaError_t.cudaErrorStreamCaptureInvalidated)
        if self._failing("end"):
            self.failing_captures -= 1
            return self._fail(cudaError_t.cudaErrorStreamCaptureUnsupported)
        self.live_graphs += 1
        return (cudaError_t.cudaSuccess, _Graph(ops))

    def cudaGraphInstantiate(self, graph, flags):
        if self._failing("instantiate"):
            self.failing_captures -= 1
            return self._fail(cudaError_t.cudaErrorInvalidValue)
        return (cudaError_t.cudaSuccess, _Graph(list(graph.ops)))

    def cudaGetLastError(self):
        err, self.last_error = self.last_error, cudaError_t.cudaSuccess
        return (err,)

    def cudaGraphLaunch(self, exec_graph, stream):
        self.launches += 1
        for op in exec_graph.ops:
            op()
        return OK

    def cudaGraphDestroy(self, graph):
        self.live_graphs -= 1
        return OK

    def cudaGraphExecDestroy(self, graph):
        return OK

    def cudaGetErrorName(self, err):
        return (cudaError_t.cudaSuccess, cudaError_t(err).name.encode())

    def cudaGetErrorString(self, err):
        return (cudaError_t.cudaSuccess, f"simulated {cudaError_t(err).name}".encode())

    def cudaGetDeviceCount(self):
        if not self.gpus:
            return (cudaError_t.cudaErrorInsufficientDriver, None)
        return (cudaError_t.cudaSuccess, self.gpus)

    def cudaGetDeviceProperties(self, i):
        return (cudaError_t.cudaSuccess, self.props)

    def cudaSetDevice(self, i):
        return OK

    def cudaMemGetInfo(self):
        return (cudaError_t.cudaSuccess, self.device_bytes - self.device_allocated, self.device_bytes)

    def cudaDriverGetVersion(self):
        return (cudaError_t.cudaSuccess, 12080)

    def cudaRuntimeGetVersion(self):
        return (cudaError_t.cudaSuccess, 12080)

    # Names the module exposes (each exists in the real cuda.bindings.runtime).
    FUNCTIONS = (
        "cudaMalloc", "cudaFree", "cudaHostAlloc", "cudaFreeHost", "cudaStreamCreateWithFlags", "cudaStreamDestroy",
        "cudaStreamSynchronize", "cudaMemcpyAsync", "cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiate",
        "cudaGraphLaunch", "cudaGraphDestroy", "cudaGraphExecDestroy", "cudaGetErrorName", "cudaGetErrorString",
        "cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaSetDevice", "cudaMemGetInfo", "cudaDriverGetVersion",
        "cudaRuntimeGetVersion", "cudaStreamIsCapturing", "cudaGetLastError",
    )
    CONSTANTS = ("cudaError_t", "cudaMemcpyKind", "cudaStreamCaptureMode", "cudaStreamCaptureStatus", "cudaHostAllocDefault", "cudaStreamNonBlocking")

    def module(self) -> types.ModuleType:
        m = types.ModuleType("cuda.bindings.runtime")
        for name in self.FUNCTIONS:
            setattr(m, name, getattr(self, name))
        m.cudaError_t, m.cudaMemcpyKind, m.cudaStreamCaptureMode = cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode
        m.cudaStreamCaptureStatus = cudaStreamCaptureStatus
        m.cudaHostAllocDefault, m.cudaStreamNonBlocking = 0, 1
        return m


def forget_modules(monkeypatch, *names: str) -> None:
    """Drop imported modules (and their attribute on the parent package, which `from . import x`
    would otherwise return) so the next import sees the stand-ins."""
    import sys

    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            monkeypatch.delattr(sys.modules[parent], child, raising=False)


def install(monkeypatch, fake: FakeCuda) -> FakeCuda:
    """Make `from cuda.bindings import runtime` return the fake (and forget modules that
    already imported the real one)."""
    import sys

    cuda_pkg = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    runtime = fake.module()
    bindings.runtime = runtime
    cuda_pkg.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    forget_modules(monkeypatch, "streetcascade.runtime.cuda", "streetcascade.runtime.backends.tensorrt")
    from streetcascade import gpu

    gpu.probe_gpus.cache_clear()  # the caller's fixture clears it again afterwards
    return fake
