"""Temperature scaling and cascade exit-threshold tuning against the validators' reward.

Inputs are measured offline on a validation split (never the test split):
- every stage's probability for every image (run each stage on all images once), and
- each stage's mean latency per image.
From these, `run_cascade` replays any choice of exit bands without re-running models:
stage s answers an image unless `lo_s <= p_s <= hi_s`, in which case the image goes on to
stage s + 1; the last stage always answers. A stage's latency is paid by every image that
reaches it. `tune_exit_thresholds` picks the bands that maximise the simulated steady-state
reward (see `reward.simulate_reward`) subject to a mean latency budget per image.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from streetcascade.calibration.reward import simulate_reward
from streetcascade.errors import BadInput
from streetcascade.runtime.classifier import sigmoid  # noqa: F401  (also part of this module's API)

DEFAULT_LO_GRID = tuple(np.round(np.arange(0.0, 0.5001, 0.025), 4))
DEFAULT_HI_GRID = tuple(np.round(np.arange(0.5, 1.0001, 0.025), 4))
NEVER_ESCALATE = (1.0, 0.0)  # lo > hi: the band is empty, the stage answers everything


# ---------------------------------------------------------------------------------- temperature


def fit_temperature(logits: Sequence[float], labels: Sequence[int], bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T > 0 minimising the NLL of sigmoid(logit / T); returns 1.0 when there is nothing to fit.

    The NLL is convex in a = 1/T (a one-weight logistic regression without bias), so Newton's
    method on `a`, kept inside the bounds, converges in a few steps.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 1 or y.shape != z.shape:
        raise BadInput(f"logits and labels must be 1-D and equally long, got {z.shape} and {y.shape}")
    if not np.isfinite(z).all():
        raise BadInput("logits must be finite")
    if not np.isin(y, (0, 1)).all():
        raise BadInput("labels must be 0 or 1")
    if z.size == 0 or not np.any(z):
        return 1.0
    y = y.astype(np.float64)
    a_lo, a_hi = 1.0 / bounds[1], 1.0 / bounds[0]
    a = 1.0
    for _ in range(100):
        p = sigmoid(a * z)
        grad = float(np.sum((p - y) * z))
        hess = float(np.sum(p * (1.0 - p) * z * z))
        if hess <= 1e-12:
            # Separable data: the NLL keeps falling as a grows; move towards the sharper bound.
            a = a_hi if grad < 0 else a_lo
            break
        step = grad / hess
        a_next = min(max(a - step, a_lo), a_hi)
        if abs(a_next - a) < 1e-10 * max(1.0, a):
            a = a_next
            break
        a = a_next
    return 1.0 / a


# ---------------------------------------------------------------------------------- cascade


@dataclass(frozen=True)
class StageScores:
    """One stage measured on the tuning images: its probability per image and its mean cost."""

    name: str
    probs: np.ndarray  # shape (n_images,), this stage's P(roadwork) for every image
    latency_ms: float  # mean time this stage adds for an image that reaches it


class CascadeChoice(msgspec.Struct, frozen=True):
    bands: list[tuple[float, float]]  # per non-final stage: escalate iff lo <= p <= hi
    steady_mean_reward: float
    mean_latency_ms: float
    within_budget: bool
    exit_rates: list[float]  # fraction of images answered by each stage
    accuracy: float


def run_cascade(stage_probs: Sequence[np.ndarray], bands: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Replay a cascade: returns (answer probability, index of the answering stage) per image."""
    if len(bands) != len(stage_probs) - 1:
        raise BadInput(f"need one band per non-final stage: {len(stage_probs)} stages, {len(bands)} bands")
    answers = np.array(stage_probs[-1], dtype=np.float64, copy=True)
    exit_stage = np.full(answers.shape, len(stage_probs) - 1, dtype=np.int64)
    pending = np.ones(answers.shape, dtype=bool)
    for s, (lo, hi) in enumerate(bands):
        p = np.asarray(stage_probs[s], dtype=np.float64)
        exits = pending & ~((p >= lo) & (p <= hi))
        answers[exits] = p[exits]
        exit_stage[exits] = s
        pending &= ~exits
    return answers, exit_stage


def mean_latency_ms(exit_stage: np.ndarray, latencies_ms: Sequence[float]) -> float:
    """Every image pays the stages up to and including the one that answered it."""
    cumulative = np.cumsum(np.asarray(latencies_ms, dtype=np.float64))
    return float(cumulative[exit_stage].mean()) if exit_stage.size else 0.0


def _evaluate(stages, labels, bands, seed, n_shuffles, budget_ms) -> CascadeChoice:
    answers, exit_stage = run_cascade([s.probs for s in stages], bands)
    latency = mean_latency_ms(exit_stage, [s.latency_ms for s in stages])
    summary = simulate_reward(answers, labels, seed=seed, n_shuffles=n_shuffles)
    rates = np.bincount(exit_stage, minlength=len(stages)) / max(exit_stage.size, 1)
    return CascadeChoice(
        bands=[(float(lo), float(hi)) for lo, hi in bands],
        steady_mean_reward=summary.steady_mean_reward,
        mean_latency_ms=latency,
        within_budget=latency <= budget_ms,
        exit_rates=[float(r) for r in rates],
        accuracy=float(np.mean(np.round(answers) == labels)),
    )


def _better(a: CascadeChoice, b: CascadeChoice | None) -> bool:
    """Feasible beats infeasible; then higher reward; ties go to the faster cascade."""
    if b is None:
        return True
    if a.within_budget != b.within_budget:
        return a.within_budget
    if not a.within_budget:
        return a.mean_latency_ms < b.mean_latency_ms
    if not math.isclose(a.steady_mean_reward, b.steady_mean_reward, rel_tol=0, abs_tol=1e-12):
        return a.steady_mean_reward > b.steady_mean_reward
    return a.mean_latency_ms < b.mean_latency_ms


def tune_exit_thresholds(
    stages: Sequence[StageScores],
    labels: Sequence[int],
    latency_budget_ms: float,
    *,
    lo_grid: Sequence[float] = DEFAULT_LO_GRID,
    hi_grid: Sequence[float] = DEFAULT_HI_GRID,
    seed: int = 0,
    n_shuffles: int = 4,
    rounds: int = 2,
) -> CascadeChoice:
    """Exit bands maximising the simulated steady-state reward within a mean latency budget.

    Two stages: exhaustive search over lo_grid x hi_grid (plus "never escalate").
    More stages: coordinate ascent, one stage's band at a time, `rounds` passes.
    Every candidate is scored on the same shuffles (`seed`), so differences are not noise from
    different challenge orders. If no candidate fits the budget, the fastest one is returned
    with `within_budget=False`.
    """
    y = np.asarray(labels)
    if len(stages) < 1:
        raise BadInput("need at least one stage")
    for stage in stages:
        if np.shape(stage.probs) != y.shape:
            raise BadInput(f"stage {stage.name!r} has {np.shape(stage.probs)} scores for {y.shape} labels")
        if not stage.latency_ms >= 0:
            raise BadInput(f"stage {stage.name!r} latency must be >= 0 ms, got {stage.latency_ms}")
    if len(stages) == 1:
        return _evaluate(stages, y, [], seed, n_shuffles, latency_budget_ms)
    candidates = [NEVER_ESCALATE] + [(lo, hi) for lo, hi in itertools.product(lo_grid, hi_grid) if lo <= hi]
    bands = [NEVER_ESCALATE] * (len(stages) - 1)
    best = _evaluate(stages, y, bands, seed, n_shuffles, latency_budget_ms)
    for _ in range(rounds if len(stages) > 2 else 1):
        for s in range(len(stages) - 1):
            for band in candidates:
                trial = list(bands)
                trial[s] = band
                choice = _evaluate(stages, y, trial, seed, n_shuffles, latency_budget_ms)
                if _better(choice, best):
                    best, bands = choice, trial
    return best


def reward_vs_threshold(
    probs: Sequence[float],
    labels: Sequence[int],
    thresholds: Sequence[float] = tuple(np.round(np.arange(0.05, 0.951, 0.05), 4)),
    *,
    seed: int = 0,
    n_shuffles: int = 4,
) -> tuple[list[float], list[float]]:
    """Steady-state reward when the miner answers 1.0 for p > t and 0.0 otherwise, per t.

    The validator always rounds at 0.5; a miner whose best cut is elsewhere should remap its
    probability before answering. Returns (thresholds, rewards).
    """
    p = np.asarray(probs, dtype=np.float64)
    rewards = [
        simulate_reward((p > t).astype(np.float64), labels, seed=seed, n_shuffles=n_shuffles).steady_mean_reward
        for t in thresholds
    ]
    return [float(t) for t in thresholds], rewards


def best_decision_threshold(thresholds: Sequence[float], rewards: Sequence[float]) -> float:
    """The threshold with the highest reward (the one nearest 0.5 among ties)."""
    if len(thresholds) == 0 or len(thresholds) != len(rewards):
        raise BadInput("need equally long, non-empty thresholds and rewards")
    top = max(rewards)
    return min((t for t, r in zip(thresholds, rewards) if r >= top - 1e-12), key=lambda t: abs(t - 0.5))
