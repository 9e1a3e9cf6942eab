"""A stand-in for the part of `torch` that runtime/backends/torch_graphs.py uses, simulating
how PyTorch's CUDA graph bookkeeping behaves when a capture fails (read from PyTorch's
aten/src/ATen/cuda/CUDAGraph.cpp and CUDAGeneratorImpl.cpp):

- `CUDAGraph.capture_begin` routes the stream's allocations to the graph pool and marks the
  device's default generator as capturing; `capture_end` calls cudaStreamEndCapture first and
  raises when the capture was invalidated, *before* it stops the pool routing and clears the
  generator's mark;
- "2.11" generators keep one mark, cleared only by a successful capture_end: a random op
  outside capture then fails with "Offset increment outside graph capture encountered
  unexpectedly"; "2.13" generators key the mark by capture and drop it when the graph object
  is destroyed;
- an operation "not permitted when stream is capturing" invalidates the capture.
Replays run the recorded Python work, so outputs can be checked.
"""

from __future__ import annotations

import contextlib
import itertools
import types


class FakeStream:
    def __init__(self, gpu):
        self.gpu = gpu
        self.capture = None  # the FakeGraph capturing on this stream
        self.synchronized = 0

    def synchronize(self):
        self.synchronized += 1


class FakeGraph:
    def __init__(self, gpu):
        self.gpu = gpu
        self.ops = []
        self.pool = None
        self.ok = False
        self.id = next(gpu.ids)
        gpu.graphs_alive += 1

    def capture_begin(self, pool=None, capture_error_mode="global"):
        gpu = self.gpu
        stream = gpu.current
        self.mode, self.pool, self.stream = capture_error_mode, pool, stream
        gpu.modes.append(capture_error_mode)
        gpu.pools_routing.add(pool)
        gpu.generator_marks.add(self.id)
        stream.capture = self
        self.invalidated = False

    def capture_end(self):
        gpu, stream = self.gpu, self.stream
        stream.capture = None  # cudaStreamEndCapture ends it, even when it reports an error
        if self.invalidated:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        gpu.pools_routing.discard(self.pool)
        if gpu.version == "2.11":
            gpu.generator_marks.clear()  # capture_epilogue: the one flag cleared
        else:
            gpu.generator_marks.discard(self.id)
        self.ok = True

    def replay(self):
        assert self.ok, "replay of a graph whose capture failed"
        self.gpu.replays += 1
        for op in self.ops:
            op()

    def __del__(self):
        self.gpu.graphs_alive -= 1
        if self.gpu.version != "2.11":
            self.gpu.generator_marks.discard(self.id)  # reset(): remove_capture_state


class FakeTensor:
    def __init__(self, gpu, value=0.0):
        self.gpu, self.value = gpu, value

    def uniform_(self):
        self.gpu.random_op()
        return self

    def add_(self, v):
        self.gpu.run(lambda: setattr(self, "value", self.value + v))
        return self


class FakeGpu:
    """State of the simulated device and the stand-in `torch` module (`module`)."""

    def __init__(self, version: str = "2.11"):
        self.version = version
        self.ids = itertools.count(1)
        self.current = None
        self.default_stream = FakeStream(self)
        self.pools_routing: set = set()
        self.generator_marks: set = set()
        self.graphs_alive = 0
        self.replays = 0
        self.modes: list[str] = []

    # work on the current stream: run now, or record while capturing
    def run(self, op):
        stream = self.current or self.default_stream
        if stream.capture is not None:
            stream.capture.ops.append(op)
        else:
            op()

    def forbidden_under_capture(self):
        """An operation CUDA refuses on a capturing stream (a sync, an event wait)."""
        stream = self.current or self.default_stream
        if stream.capture is not None:
            stream.capture.invalidated = True
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    def random_op(self):
        stream = self.current or self.default_stream
        if stream.capture is None and self.generator_marks:
            raise RuntimeError("Offset increment outside graph capture encountered unexpectedly.")

    @contextlib.contextmanager
    def stream_ctx(self, stream):
        before, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = before

    def module(self) -> types.SimpleNamespace:
        gpu = self
        cuda = types.SimpleNamespace(
            CUDAGraph=lambda: FakeGraph(gpu),
            Stream=lambda device=None: FakeStream(gpu),
            stream=gpu.stream_ctx,
            graph_pool_handle=lambda: (0, next(gpu.ids)),
            is_current_stream_capturing=lambda: (gpu.current or gpu.default_stream).capture is not None,
            current_device=lambda: 0,
        )
        C = types.SimpleNamespace(_cuda_endAllocateToPool=lambda index, pool: gpu.pools_routing.discard(pool))
        return types.SimpleNamespace(
            cuda=cuda, _C=C,
            empty=lambda n, device=None: FakeTensor(gpu),
            zeros=lambda n, device=None: FakeTensor(gpu),
            device=lambda spec: types.SimpleNamespace(type="cuda", index=0),
        )
