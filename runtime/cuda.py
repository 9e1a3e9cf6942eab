"""CUDA mechanics for the GPU backends, over `cuda.bindings.runtime` (cuda-python 12.6+ / 13.x).

Every call returns an error tuple (the bindings never raise); `check` turns a failure into our
error tree with CUDA's own name and message. What lives here:

- `Stream`: one per slot (a request in flight), non-blocking.
- `DeviceBuffer` / `PinnedBuffer`: device memory, and page-locked host memory seen as a numpy
  array (async copies need pinned memory to overlap), both allocated at load, freed on close.
- `copy_h2d` / `copy_d2h`: async copies on a stream.
- `GraphCapture`: capture everything enqueued on a stream (copy in, execute, copy out) into a
  CUDA graph (thread-local capture mode) and replay it with one launch; a failed capture is
  cleaned up (capture ended, partial graph destroyed, last error cleared, stream synchronised)
  and reported, so the caller falls back to the plain path and counts it.
- `ArenaPool`: one device scratch arena per thread, shared by every engine that thread runs one
  after another (TensorRT's USER_MANAGED execution-context memory), sized to the largest need.

Import it only on a GPU machine (it imports cuda-python); tests drive it with a stand-in module
that has the same function names, checked against the real bindings.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from streetcascade.errors import BackendUnavailable, InferenceError

try:
    from cuda.bindings import runtime as rt
except ImportError as exc:  # the `gpu` extra installs cuda-python
    raise BackendUnavailable(f"cuda-python is not installed (pip install 'streetcascade[gpu]'): {exc}") from exc

SUCCESS = rt.cudaError_t.cudaSuccess


def check(result, what: str, error: type = InferenceError):
    """Unwrap a cuda.bindings result tuple: (err,) or (err, value) or (err, v1, v2 ...)."""
    err = result[0]
    if err != SUCCESS:
        text = rt.cudaGetErrorString(err)[1]
        text = text.decode() if isinstance(text, bytes) else str(text)
        raise error(f"CUDA {what} failed: {_name(err)}: {text}")
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


class Stream:
    def __init__(self):
        self.handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        check(rt.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            rt.cudaStreamDestroy(self.handle)
            self.handle = None


class DeviceBuffer:
    def __init__(self, nbytes: int, what: str = "device buffer"):
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(rt.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes} bytes) for {what}", BackendUnavailable))

    def close(self) -> None:
        if self.ptr:
            rt.cudaFree(self.ptr)
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory as a numpy array of `shape` and `dtype`."""

    def __init__(self, shape, dtype):
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.nbytes = max(int(np.prod(self.shape)) * self.dtype.itemsize, 1)
        self.ptr = int(check(rt.cudaHostAlloc(self.nbytes, rt.cudaHostAllocDefault), f"cudaHostAlloc({self.nbytes} bytes)", BackendUnavailable))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=self.dtype, count=int(np.prod(self.shape))).reshape(self.shape)

    def close(self) -> None:
        if self.ptr:
            self.array = None
            rt.cudaFreeHost(self.ptr)
            self.ptr = 0


def copy_h2d(dst_ptr: int, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    check(rt.cudaMemcpyAsync(dst_ptr, src.ptr, nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle), "cudaMemcpyAsync H2D")


def copy_d2h(dst: PinnedBuffer, src_ptr: int, nbytes: int, stream: Stream) -> None:
    check(rt.cudaMemcpyAsync(dst.ptr, src_ptr, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle), "cudaMemcpyAsync D2H")


class GraphCapture:
    """A CUDA graph of the work `enqueue()` puts on `stream`, replayed with `launch()`.

    Capture runs `enqueue` once in capture mode (nothing executes); TensorRT needs a warmed-up
    context (one plain run at this shape first) for capture to succeed. `GraphCapture.try_make`
    returns (None, why) when capture or instantiation fails, and leaves the process as it was
    before the attempt (see `_abandon`), so the caller keeps the plain path and later captures,
    engines and compiles in this process work.

    Capture mode: thread-local. Global mode (CUDA's default) makes every *other* thread's
    potentially unsafe call (a cudaMalloc, a synchronous copy: another slot loading or running
    its plain path) fail and invalidate this capture; relaxed mode would let this thread's own
    unsafe calls through silently and bake a wrong graph. Thread-local refuses exactly the
    calls that would break this graph, and only in the thread that captures it."""

    MODE = "cudaStreamCaptureModeThreadLocal"

    def __init__(self, graph, exec_graph, stream: Stream):
        self.graph = graph
        self.exec_graph = exec_graph
        self.stream = stream

    @classmethod
    def try_make(cls, stream: Stream, enqueue) -> tuple["GraphCapture | None", str]:
        mode = getattr(rt.cudaStreamCaptureMode, cls.MODE)
        err = rt.cudaStreamBeginCapture(stream.handle, mode)[0]
        if err != SUCCESS:
            cls._abandon(stream, None)
            return None, f"cudaStreamBeginCapture: {_name(err)}"
        failure = ""
        try:
            enqueue()
        except Exception as exc:  # noqa: BLE001 - the backend's enqueue failed under capture: fall back
            failure = f"enqueue under capture: {exc}"
        # Always end the capture, whatever happened: a stream left capturing would swallow every
        # later launch on it. An invalidated capture returns no graph; a capture that ended
        # cleanly after the backend reported a failure returns a partial graph, never to be used.
        err, graph = rt.cudaStreamEndCapture(stream.handle)
        if failure or err != SUCCESS or not _is_graph(graph):
            cls._abandon(stream, graph if err == SUCCESS else None)
            return None, failure or f"cudaStreamEndCapture: {_name(err)}"
        err, exec_graph = rt.cudaGraphInstantiate(graph, 0)
        if err != SUCCESS:
            cls._abandon(stream, graph)
            return None, f"cudaGraphInstantiate: {_name(err)}"
        return cls(graph, exec_graph, stream), ""

    @staticmethod
    def _abandon(stream: Stream, graph) -> None:
        """Leave no trace of a failed capture: destroy the partial graph, clear this thread's
        last CUDA error (the capture's error would otherwise be reported by the next check
        that reads it, far from its cause), end a capture somehow still open, and wait for the
        stream. A synchronisation failure here is a sticky error: the context is lost, raise."""
        if graph is not None and _is_graph(graph):
            rt.cudaGraphDestroy(graph)
        status = rt.cudaStreamIsCapturing(stream.handle)
        if status[0] == SUCCESS and status[1] != rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone:
            err, left = rt.cudaStreamEndCapture(stream.handle)
            if err == SUCCESS and _is_graph(left):
                rt.cudaGraphDestroy(left)
        rt.cudaGetLastError()
        check(rt.cudaStreamSynchronize(stream.handle), "cudaStreamSynchronize after a failed CUDA graph capture")

    def launch(self) -> None:
        check(rt.cudaGraphLaunch(self.exec_graph, self.stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        if self.exec_graph is not None:
            rt.cudaGraphExecDestroy(self.exec_graph)
            rt.cudaGraphDestroy(self.graph)
            self.exec_graph = self.graph = None


def _name(err) -> str:
    name = rt.cudaGetErrorName(err)[1]
    return name.decode() if isinstance(name, bytes) else str(name)


def _is_graph(graph) -> bool:
    """cuda.bindings hands back a cudaGraph_t wrapper even for NULL: look at its address."""
    if graph is None:
        return False
    try:
        return int(graph) != 0
    except TypeError:
        return True


class ArenaPool:
    """Device scratch memory shared by the engines one thread runs one after another.

    Engines register their scratch need at load (`reserve`); the first slot a thread makes
    allocates that thread's arena at the largest registered size. Registering a larger need
    after an arena exists is refused: load every engine before making slots (load_engine_set
    does). So the memory plan counts scratch once per slot, not once per engine."""

    def __init__(self):
        self.size = 0
        self._local = threading.local()
        self._arenas: list[DeviceBuffer] = []
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        with self._lock:
            if nbytes > self.size and self._arenas:
                raise InferenceError(f"an engine needing {nbytes} bytes of scratch was loaded after arenas of {self.size} bytes were made")
            self.size = max(self.size, int(nbytes))

    def for_this_thread(self) -> DeviceBuffer:
        arena = getattr(self._local, "arena", None)
        if arena is None:
            arena = DeviceBuffer(self.size, "the shared scratch arena")
            with self._lock:
                self._arenas.append(arena)
            self._local.arena = arena
        return arena

    @property
    def allocated_bytes(self) -> int:
        return sum(a.nbytes for a in self._arenas)

    def close(self) -> None:
        with self._lock:
            for arena in self._arenas:
                arena.close()
            self._arenas = []
