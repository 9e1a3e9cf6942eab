"""The evaluator's computational core: score a cascade's answers the way validators do.

Input is one row per challenge: the label, the answered probability (-1 = no answer in time),
and optionally the augmentation level, the source (real / synthetic), the stage that answered
and the end-to-end latency. Output is an `EvalReport` (msgspec Struct, JSON-ready; `report.py`
renders it to HTML).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import numpy as np

from streetcascade.calibration import metrics
from streetcascade.calibration.reward import NO_ANSWER, RewardSummary, simulate_reward
from streetcascade.calibration.tune import best_decision_threshold, reward_vs_threshold
from streetcascade.errors import BadInput


class Breakdown(msgspec.Struct, frozen=True):
    n: int
    answered: int
    accuracy: float
    mcc: float
    auc: float | None  # None when the group holds one class


class LatencyStats(msgspec.Struct, frozen=True):
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


class RewardCurve(msgspec.Struct, frozen=True):
    thresholds: list[float]
    rewards: list[float]
    best_threshold: float


class EvalReport(msgspec.Struct, frozen=True):
    n: int
    answered: int
    accuracy: float
    mcc: float
    auc: float | None
    ece: float
    log_loss: float
    brier: float
    confusion: metrics.Confusion
    reliability: metrics.ReliabilityBins
    reward: RewardSummary
    reward_curve: RewardCurve
    per_level: dict[str, Breakdown]
    per_source: dict[str, Breakdown]
    exit_rates: dict[str, float]  # stage name -> fraction of answered challenges
    latency: LatencyStats | None


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _breakdown(labels: np.ndarray, probs: np.ndarray) -> Breakdown:
    answered = probs != NO_ANSWER
    y, p = labels[answered], probs[answered]
    if y.size == 0:
        return Breakdown(n=int(labels.size), answered=0, accuracy=0.0, mcc=0.0, auc=None)
    return Breakdown(
        n=int(labels.size),
        answered=int(y.size),
        accuracy=metrics.accuracy(y, p),
        mcc=metrics.mcc(y, p),
        auc=_none_if_nan(metrics.auc(y, p)),
    )


def latency_stats(latencies_ms: Sequence[float]) -> LatencyStats:
    lat = np.asarray(latencies_ms, dtype=np.float64)
    if lat.size == 0:
        raise BadInput("no latencies to summarise")
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return LatencyStats(float(lat.mean()), float(p50), float(p90), float(p99), float(lat.max()))


def evaluate(
    labels: Sequence[int],
    probs: Sequence[float],
    *,
    levels: Sequence[int] | None = None,
    sources: Sequence[str] | None = None,
    exit_stages: Sequence[int] | None = None,
    stage_names: Sequence[str] | None = None,
    latencies_ms: Sequence[float] | None = None,
    seed: int = 0,
    n_shuffles: int = 20,
    n_bins: int = 10,
) -> EvalReport:
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape or y.size == 0:
        raise BadInput(f"labels and probs must be non-empty, 1-D and equally long, got {y.shape} and {p.shape}")
    if not np.isin(y, (0, 1)).all():
        raise BadInput("labels must be 0 or 1")
    answered = p != NO_ANSWER
    bad = answered & ~(np.isfinite(p) & (p >= 0) & (p <= 1))
    if bad.any():
        raise BadInput(f"{int(bad.sum())} probabilities are neither -1 (no answer) nor within [0, 1]")
    for name, column in (("levels", levels), ("sources", sources), ("exit_stages", exit_stages), ("latencies_ms", latencies_ms)):
        if column is not None and len(column) != y.size:
            raise BadInput(f"{name} has {len(column)} entries for {y.size} challenges")

    ya, pa = y[answered].astype(np.int64), p[answered]
    overall = _breakdown(y, p)
    if ya.size:
        confusion = metrics.confusion(ya, pa)
        reliability = metrics.reliability_bins(ya, pa, n_bins)
        ece, nll, brier = metrics.expected_calibration_error(ya, pa, n_bins), metrics.log_loss(ya, pa), metrics.brier(ya, pa)
        thresholds, curve = reward_vs_threshold(pa, ya, seed=seed, n_shuffles=max(1, n_shuffles // 4))
    else:
        confusion = metrics.Confusion(0, 0, 0, 0)
        reliability = metrics.reliability_bins([], [], n_bins)
        ece = nll = brier = 0.0
        thresholds, curve = [0.5], [0.0]

    per_level = {}
    if levels is not None:
        lv = np.asarray(levels)
        per_level = {f"L{int(v)}": _breakdown(y[lv == v], p[lv == v]) for v in np.unique(lv)}
    per_source = {}
    if sources is not None:
        src = np.asarray([s or "unknown" for s in sources])
        per_source = {str(v): _breakdown(y[src == v], p[src == v]) for v in np.unique(src)}
    exit_rates: dict[str, float] = {}
    if exit_stages is not None:
        stages = np.asarray(exit_stages)[answered]
        count = int(stages.max()) + 1 if stages.size else 0
        names = list(stage_names) if stage_names is not None else [f"stage{k + 1}" for k in range(count)]
        if len(names) < count:
            raise BadInput(f"{len(names)} stage names for stage indices up to {count - 1}")
        exit_rates = {names[k]: float(np.mean(stages == k)) if stages.size else 0.0 for k in range(len(names))}

    return EvalReport(
        n=int(y.size),
        answered=int(ya.size),
        accuracy=overall.accuracy,
        mcc=overall.mcc,
        auc=overall.auc,
        ece=ece,
        log_loss=nll,
        brier=brier,
        confusion=confusion,
        reliability=reliability,
        reward=simulate_reward(p, y, seed=seed, n_shuffles=n_shuffles),
        reward_curve=RewardCurve(thresholds, curve, best_decision_threshold(thresholds, curve)),
        per_level=per_level,
        per_source=per_source,
        exit_rates=exit_rates,
        latency=latency_stats(latencies_ms) if latencies_ms is not None and len(latencies_ms) else None,
    )
