"""CUDA graphs of PyTorch work (the AOTInductor backend's), captured through PyTorch's own
`torch.cuda.CUDAGraph`, and a failed capture that leaves the process as it was before.

Why PyTorch's API and not the raw capture of runtime/cuda.py: inside a capture, PyTorch's
caching allocator must serve the model's allocations from a private graph pool (so replays
find their memory where capture put it), and its CUDA RNG generators must know a capture is
under way. `CUDAGraph.capture_begin` / `capture_end` do that bookkeeping; raw
cudaStreamBeginCapture around torch calls would bypass it.

Why not the `torch.cuda.graph` context manager: on entry it synchronises the whole device and
empties the allocator's cache (another slot's thread may be running or capturing then), and
when `capture_end` raises it never restores the current stream.

Why a failed capture needs repair. `capture_end` raises when cudaStreamEndCapture reports the
capture invalidated (an operation not permitted while the stream is capturing), and it raises
before it does the rest of its bookkeeping:
- the allocator keeps the graph pool in its list of captures under way;
- PyTorch up to 2.11 keeps one "capturing" flag per CUDA generator, set by `capture_begin` and
  cleared only by a successful `capture_end`; left set, every later random op in the process
  fails with "Offset increment outside graph capture encountered unexpectedly" (on the lent
  H200 the next AOTInductor compile failed so: Inductor's autotuner draws random inputs).
  PyTorch 2.13 keys that state per capture and drops it when the graph object is destroyed.
`TorchGraphCapture.capture` therefore, after a failure: ends a capture still open, takes the
pool out of the allocator's capture list, destroys the graph object, clears this thread's
last CUDA error, synchronises the stream, and checks the generator with one random draw; if
that draw fails, one tiny capture that succeeds (which clears the flag on any version) puts
it right, and the draw is checked again.

Capture mode: thread-local (see runtime/cuda.py `GraphCapture`): other threads (other slots
running their plain path, allocating) cannot invalidate this capture, and this thread's own
unsafe calls are still refused rather than baked into a wrong graph.

The module takes the `torch` module as an argument instead of importing it (runtime/ must
import without torch): the AOTInductor backend passes its own; tests pass a stand-in.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import threading

from streetcascade.errors import InferenceError

log = logging.getLogger(__name__)

CAPTURE_MODE = "thread_local"
# PyTorch allows one capture under way per process at a time (torch.cuda.graph's own note):
# slots that reach their capture together take turns. Captures happen once per batch size per
# slot, so the lock costs nothing in steady state.
_CAPTURE_LOCK = threading.Lock()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def clear_last_cuda_error() -> bool:
    """cudaGetLastError() on the CUDA runtime PyTorch itself loaded (the last-error state is per
    runtime library and per thread; `torch.cuda` has no binding for it). False when no
    libcudart is mapped into this process (a statically linked build)."""
    path = _loaded_cudart()
    if path is None:
        return False
    try:
        ctypes.CDLL(path).cudaGetLastError()
    except (OSError, AttributeError):
        return False
    return True


def _loaded_cudart() -> str | None:
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if "/libcudart.so" in path:
                    return path
    except OSError:
        pass
    return None


class TorchGraphCapture:
    """Captures callables on one stream (a slot's) into `torch.cuda.CUDAGraph`s sharing one
    memory pool. Sharing is safe here because the slot replays one graph at a time on its own
    stream and copies each graph's output out before the next replay."""

    def __init__(self, torch, device, stream, mode: str = CAPTURE_MODE):
        self.torch = torch
        self.device = device
        self.stream = stream
        self.mode = mode
        self.pool = None
        self.repairs = 0  # generator repairs done after failed captures (reported in stats)

    def capture(self, fn):
        """(graph, output, "") with `fn`'s work captured (not run: replay it), or
        (None, None, why) after a failure, the process left as it was."""
        cuda = self.torch.cuda
        with _CAPTURE_LOCK:
            if self.pool is None:
                self.pool = cuda.graph_pool_handle()
            self.stream.synchronize()  # the warm-up runs this capture follows are done
            graph = cuda.CUDAGraph()
            failure, out, began, ended = "", None, False, False
            with cuda.stream(self.stream):
                try:
                    graph.capture_begin(pool=self.pool, capture_error_mode=self.mode)
                    began = True
                    out = fn()
                except Exception as exc:  # noqa: BLE001 - any failure under capture: fall back
                    failure = f"{'model under capture' if began else 'capture_begin'}: {first_line(exc)}"
                if began:
                    try:
                        graph.capture_end()
                        ended = True
                    except Exception as exc:  # noqa: BLE001
                        failure = failure or f"capture_end: {first_line(exc)}"
            if not failure:
                return graph, out, ""
            # Hand over the only reference: the graph object must die inside _recover (its
            # destructor is what drops PyTorch 2.13's per-capture generator state).
            holder = [graph]
            del graph, out
            self._recover(holder, began, ended)
            return None, None, failure

    def _recover(self, holder: list, began: bool, ended: bool) -> None:
        cuda = self.torch.cuda
        graph = holder.pop()
        with cuda.stream(self.stream):
            if cuda.is_current_stream_capturing():  # capture_end never reached cudaStreamEndCapture
                try:
                    graph.capture_end()
                    ended = True
                except Exception as exc:  # noqa: BLE001
                    log.debug("ending the failed capture: %s", first_line(exc))
        if began and not ended:
            self._end_allocating_to_pool()
        del graph
        gc.collect()  # a traceback may still hold the graph: its destructor drops its capture state
        clear_last_cuda_error()
        try:
            self.stream.synchronize()
        except Exception as exc:  # a sticky error: this process's CUDA context is lost
            raise InferenceError(f"the GPU context is unusable after a failed CUDA graph capture: {first_line(exc)}") from exc
        if not self._rng_usable():
            self.repairs += 1
            self._clear_generator_capture_flag()
            if not self._rng_usable():
                raise InferenceError("PyTorch's CUDA random generator still believes a graph capture is under way after a failed "
                                     "capture; later compiles in this process would fail (restart the process)")

    def _end_allocating_to_pool(self) -> None:
        """What capture_end would have done for the allocator: stop routing this stream's
        allocations to the graph pool (name of the binding by PyTorch version)."""
        C = self.torch._C
        index = self.device.index if self.device.index is not None else self.torch.cuda.current_device()
        for name in ("_cuda_endAllocateToPool", "_cuda_endAllocateCurrentStreamToPool"):
            end = getattr(C, name, None)
            if end is None:
                continue
            try:
                end(index, self.pool)
            except Exception as exc:  # noqa: BLE001 - already ended by a later PyTorch's capture_end
                log.debug("%s: %s", name, first_line(exc))
            return

    def _rng_usable(self) -> bool:
        try:
            with self.torch.cuda.stream(self.stream):
                self.torch.empty(4, device=self.device).uniform_()
            self.stream.synchronize()
            return True
        except RuntimeError as exc:
            if "capture" not in str(exc):
                raise
            log.warning("after a failed CUDA graph capture PyTorch's CUDA generator is stuck in capture mode (%s); repairing it", first_line(exc))
            return False

    def _clear_generator_capture_flag(self) -> None:
        """One capture that succeeds: capture_begin marks the device's default generator as
        capturing, capture_end clears the mark; the graph itself is thrown away."""
        cuda = self.torch.cuda
        scratch = self.torch.zeros(1, device=self.device)
        graph = cuda.CUDAGraph()
        with cuda.stream(self.stream):
            graph.capture_begin(capture_error_mode=self.mode)
            scratch.add_(1)
            graph.capture_end()
        self.stream.synchronize()
        del graph
