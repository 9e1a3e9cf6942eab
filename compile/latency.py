"""Engine latency as a ratio against a reference run of the same model, timed side by side.

At compile time the pipeline times every graph at batch 1 against its reference and records
the ratio in the manifest (`GraphEntry.latency`): PyTorch eager on the exported module (the
same weights, on the target's device), or, for a graph that came as ONNX (PP-OCR), that source
graph run by ONNX Runtime unoptimised. The latency-regression suite (tests/latency/) times both
again and compares the new ratio with the recorded one. Absolute milliseconds are never
compared: a shared 2-core box moves them by 2x from one minute to the next.

Both sides run on ONE thread while timed (the engine loaded with intra_op_threads = 1 and no
spinning, torch.set_num_threads(1)): multi-threaded runtimes on an oversubscribed box stall at
their barriers whenever a peer thread is descheduled, which made two-thread ratios swing by 10x
under load, while one thread on each side keeps them within a few percent. The ratio is a
regression reference, not a speed claim (bench/ measures speed at full thread count).
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import msgspec
import numpy as np

from streetcascade.manifest import GraphIO, LatencyRatio, TargetInfo
from streetcascade.runtime.backends import Engine, get_backend
from streetcascade.settings import RuntimeConfig
from streetcascade.timing import time_calls

from .models.base import ExportableGraph

WARMUP = 3
BLOCK = 5  # calls per block; blocks alternate engine, reference, engine, ...
MIN_BLOCKS = 3  # per side
# Cheap graphs get more calls than `runs`, up to this much time or MAX_RUNS: with 30 calls of a
# millisecond, one noisy spell moved a recorded ratio by 3x; with 150 it stayed within 7%.
BUDGET_S = 1.0
MAX_RUNS = 200
# Costly graphs get fewer calls than `runs`, down to MIN_BLOCKS blocks, to stay near MAX_S; a
# graph whose fewest calls would still take longer than SKIP_S is not timed (TooSlowToTime).
MAX_S = 20.0
SKIP_S = 60.0
RECORD_REPEATS = 3  # compile-time measurements of a cheap graph; the median one is recorded
RECORD_BUDGET_S = 4.0  # "cheap": the extra repeats take at most this long
# How engines are loaded for timing: one thread, no spinning (see the module docstring).
TIMING_RUNTIME = RuntimeConfig(intra_op_threads=1, spin_wait=False)


class TooSlowToTime(Exception):
    """The graph and its reference are too slow to time side by side at compile time."""


@contextmanager
def timing_engine(path: str | Path, io: GraphIO, target: TargetInfo):
    """The built engine file loaded again through its backend with TIMING_RUNTIME's threads."""
    backend = get_backend(target.backend)
    try:
        with backend.load(str(path), io, backend.options_for_target(TIMING_RUNTIME, target)) as engine:
            yield engine
    finally:
        backend.close()  # what the backend shares between engines (a GPU arena)


@contextmanager
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference_call(graph: ExportableGraph, device: str) -> tuple[str, Callable[[dict[str, np.ndarray]], object], Callable[[], None]]:
    """(name, call, close) of the graph's latency reference on `device` ("cpu" or "cuda")."""
    if graph.module is None:  # a ready ONNX graph: the source graph, unoptimised, in ONNX Runtime on one thread
        if graph.onnx_source is None:
            raise ValueError(f"graph {graph.decl.role}: neither a module nor a source ONNX graph to time against")
        backend = get_backend("onnxruntime")
        options = msgspec.structs.replace(backend.options_for(TIMING_RUNTIME, "cpu"), optimize=False)
        engine = backend.load(str(graph.onnx_source), graph.decl.io, options)
        slot = engine.slot()

        def close():
            slot.close()
            engine.close()

        return "onnx-source-onnxruntime", slot.infer, close
    import torch

    # PyTorch on the target's device; a CPU-only torch beside GPU engines times eager on the CPU
    # (still one fixed reference for the ratio; its name says which).
    dev = torch.device("cuda" if device == "cuda" and torch.cuda.is_available() else "cpu")
    # A copy on the GPU: the pipeline's module stays where the rest of the compile expects it.
    module = graph.module if dev.type == "cpu" else copy.deepcopy(graph.module).to(dev)
    module.eval()
    names = [spec.name for spec in graph.decl.io.inputs]

    def run(feeds: dict[str, np.ndarray]):
        with torch.inference_mode():
            out = module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])).to(dev) for n in names])
            if dev.type == "cuda":
                torch.cuda.synchronize()
        return out

    return f"pytorch-eager-{dev.type}", run, lambda: None


def latency_feeds(graph: ExportableGraph, images: np.ndarray | None) -> dict[str, np.ndarray]:
    """Batch-1 inputs: one parity image for a classifier, the family's first example input
    (batch 1, real sizes) for a tensor graph."""
    if graph.decl.parity == "classifier":
        if images is None or len(images) == 0:
            raise ValueError("a classifier graph's latency needs an image")
        return {graph.decl.io.inputs[0].name: np.ascontiguousarray(images[:1])}
    if not graph.parity_feeds:
        raise ValueError(f"graph {graph.decl.role}: no example inputs to time it on")
    return graph.parity_feeds[0]


def measure(engine_call: Callable[[], object], reference_call_: Callable[[], object], reference: str, runs: int, batch: int = 1,
            budget_s: float = BUDGET_S) -> LatencyRatio:
    """Time the engine and the reference side by side: short alternating blocks (BLOCK calls of
    one, then of the other), so a noisy spell on a shared box lands on both; p50 is the median
    of the per-block ratios, p99 the ratio of the pooled 99th percentiles. At least `runs` calls
    a side, more for cheap graphs (as many as fit in `budget_s`, at most MAX_RUNS)."""
    pair_ms = float(np.median(time_calls(engine_call, WARMUP, warmup=0)) + np.median(time_calls(reference_call_, WARMUP, warmup=0)))
    fewest = MIN_BLOCKS * BLOCK
    if budget_s and fewest * pair_ms / 1000.0 > SKIP_S:
        raise TooSlowToTime(f"{fewest} calls of the engine and the reference would take {fewest * pair_ms / 1000.0:.0f} s")
    if budget_s:
        runs = max(runs, min(MAX_RUNS, int(budget_s * 1000.0 / max(pair_ms, 1e-3))))
        runs = min(runs, max(fewest, int(MAX_S * 1000.0 / max(pair_ms, 1e-3))))
    engine, ref = [], []
    for _ in range(max(MIN_BLOCKS, -(-runs // BLOCK))):
        engine.append(time_calls(engine_call, BLOCK, warmup=0))
        ref.append(time_calls(reference_call_, BLOCK, warmup=0))
    per_block = [float(np.median(e) / np.median(r)) for e, r in zip(engine, ref)]
    e_all, r_all = np.concatenate(engine), np.concatenate(ref)
    e50, e99 = float(np.percentile(e_all, 50)), float(np.percentile(e_all, 99))
    r50, r99 = float(np.percentile(r_all, 50)), float(np.percentile(r_all, 99))
    return LatencyRatio(
        reference=reference,
        batch=batch,
        runs=len(e_all),
        engine_p50_ms=round(e50, 4),
        engine_p99_ms=round(e99, 4),
        reference_p50_ms=round(r50, 4),
        reference_p99_ms=round(r99, 4),
        ratio_p50=round(float(np.median(per_block)), 4),
        ratio_p99=round(e99 / r99, 4),
    )


@contextmanager
def _timing(engine: Engine, graph: ExportableGraph, images, device: str):
    """(engine call, reference call, name, batch) with one thread on each side."""
    name, ref, close = reference_call(graph, device)
    feeds = latency_feeds(graph, images)
    threads = one_torch_thread() if graph.module is not None else nullcontext()
    try:
        with threads, engine.slot() as slot:
            yield (lambda: slot.infer(feeds)), (lambda: ref(feeds)), name, int(next(iter(feeds.values())).shape[0])
    finally:
        close()


def measure_graph(engine: Engine, graph: ExportableGraph, images: np.ndarray | None, device: str, runs: int) -> LatencyRatio:
    """The engine's batch-1 latency against the graph's reference (what the manifest records).
    `engine` should be a timing engine (`timing_engine`). A graph cheap enough is measured
    RECORD_REPEATS times and the measurement with the median p50 ratio is kept, so one noisy
    spell during the compile does not become the baseline every later run is held to."""
    with _timing(engine, graph, images, device) as (call, ref, name, batch):
        first = measure(call, ref, name, runs, batch)
        seconds = first.runs * (first.engine_p50_ms + first.reference_p50_ms) / 1000.0
        if seconds * (RECORD_REPEATS - 1) > RECORD_BUDGET_S:
            return first
        results = [first] + [measure(call, ref, name, first.runs, batch, budget_s=0.0) for _ in range(RECORD_REPEATS - 1)]
        return sorted(results, key=lambda r: r.ratio_p50)[len(results) // 2]


@dataclass(frozen=True)
class Tolerance:
    """How far a re-measured ratio may rise above the recorded one before it is a regression.
    A 2x slower engine doubles its ratio, so p50 at 1.5x catches it with room for the noise of
    a shared 2-core box; p99 (the slowest of a few dozen calls) is noisier and gets more room."""

    p50: float = 1.5
    p99: float = 2.5


@dataclass
class Verdict:
    """Every attempt's figures; passed when one attempt was within tolerance (a real regression
    is over it in every attempt; a noisy neighbour rarely spoils them all)."""

    label: str
    baseline: tuple[float, float]  # the (p50, p99) ratio it was held to
    tolerance: Tolerance
    attempts: list[tuple[float, float]] = field(default_factory=list)  # (p50, p99) ratio per attempt
    passed: bool = False

    def describe(self) -> str:
        b50, b99 = self.baseline
        seen = "; ".join(f"p50 {p50:.3f} ({p50 / b50:.2f}x), p99 {p99:.3f} ({p99 / b99:.2f}x)" for p50, p99 in self.attempts)
        return (f"{self.label}: ratio vs baseline p50 {b50:.3f} / p99 {b99:.3f}, tolerance {self.tolerance.p50:g}x / "
                f"{self.tolerance.p99:g}x; {'passed' if self.passed else 'OVER in every attempt'}: {seen}")


def within(ratio: tuple[float, float], baseline: tuple[float, float], tolerance: Tolerance) -> bool:
    return ratio[0] <= baseline[0] * tolerance.p50 and ratio[1] <= baseline[1] * tolerance.p99


def check(label: str, measure_once: Callable[[], tuple[float, float]], baseline: tuple[float, float],
          tolerance: Tolerance = Tolerance(), attempts: int = 5, pause_s: float = 0.5) -> Verdict:
    """Measure up to `attempts` times; stop at the first (p50, p99) ratio within tolerance of
    `baseline`."""
    verdict = Verdict(label, baseline, tolerance)
    for i in range(attempts):
        ratio = measure_once()
        verdict.attempts.append(ratio)
        if within(ratio, baseline, tolerance):
            verdict.passed = True
            break
        if i + 1 < attempts:
            time.sleep(pause_s)  # let whatever disturbed this attempt pass
    return verdict


def check_graph(engine: Engine, graph: ExportableGraph, images: np.ndarray | None, device: str, recorded: LatencyRatio,
                tolerance: Tolerance = Tolerance(), attempts: int = 5, runs: int | None = None, label: str = "") -> Verdict:
    """Re-measure `engine` (a timing engine) against the graph's reference and hold the ratio to
    the one the manifest recorded at compile time."""
    with _timing(engine, graph, images, device) as (call, ref, name, batch):
        if name != recorded.reference:
            raise ValueError(f"{label}: recorded against {recorded.reference}, can re-measure against {name} only")

        def once() -> tuple[float, float]:  # as many calls as the recording made
            r = measure(call, ref, name, runs or recorded.runs, batch, budget_s=0.0)
            return r.ratio_p50, r.ratio_p99

        return check(label or graph.decl.role, once, baseline_of(recorded), tolerance, attempts)


def baseline_of(recorded: LatencyRatio) -> tuple[float, float]:
    """The (p50, p99) ratios a re-measurement is held to. The recorded p99 ratio compares the two
    sides' slowest calls, so a spike in the reference's tail can leave it far below the p50
    ratio (seen: 0.2 against 0.44); it is never taken below the p50 ratio."""
    return recorded.ratio_p50, max(recorded.ratio_p99, recorded.ratio_p50)
