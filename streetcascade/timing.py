"""Timing helpers: side-by-side latency measurement for `backend = "auto"` (compile picks the
fastest CPU target), the benchmarks in bench/ and the latency-regression tests."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 2) -> np.ndarray:
    """Milliseconds of `runs` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1000.0
    return out


def interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 2, rounds: int = 3) -> dict[str, np.ndarray]:
    """Time several variants in rounds (A.., B.., A.., B..) so machine noise hits all of them
    alike; blocks rather than alternating calls, so one runtime's spinning threads do not
    steal the CPU from the next call of another."""
    per_round = max(1, runs // rounds)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(time_calls(fn, per_round, warmup))
    return {name: np.concatenate(parts) for name, parts in samples.items()}


def summary(ms: np.ndarray) -> tuple[float, float]:
    """(median, p99) in ms."""
    return float(np.median(ms)), float(np.percentile(ms, 99))
