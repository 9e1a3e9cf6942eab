"""The validators' reward, computed exactly as they compute it, and simulated over a dataset.

Source: natixnetwork/streetvision-subnet v2.0.4 (commit 28a1755):
`natix/validator/reward.py` (`get_rewards`, `compute_penalty`),
`natix/validator/miner_performance_tracker.py` (`MinerPerformanceTracker`),
`natix/validator/config.py` (`REWARD_CURVE_EXPONENT = 3.0`),
`natix/base/validator.py` (`update_scores`: EMA with `neuron.moving_average_alpha` = 0.05).

Per miner, per challenge, the validator:
1. appends (prediction, label) to the miner's history (a deque of the last 100), -1 answers
   included (they use up window slots); a new hotkey on the uid resets the history;
2. computes metrics over the last 100 and the last 10 entries: drops entries whose prediction
   is exactly -1, rounds the rest with `np.round` (0.5 -> 0, 1.5 -> 2), and uses sklearn's
   accuracy and `max(0, matthews_corrcoef)`, MCC being 0 unless both the labels and the rounded
   predictions hold two distinct values; an empty window gives all-zero metrics;
3. reward = 0 if the prediction is -1, else `(0.5 * mcc_100 + 0.5 * acc_10) * penalty) ** 3`
   with penalty 0 for a prediction outside [0, 1].

sklearn raises inside `get_metrics` (and the tracker returns all-zero metrics) when a window
holds a non-finite prediction or a rounded prediction outside {0, 1} that makes the
label/prediction union larger than two values or lack the positive label 1 (precision_score
with the default pos_label=1); `window_metrics` reproduces that, so a single 1.6 answer zeroes
the miner's MCC for the next 100 challenges, as on the real subnet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import numpy as np

from streetcascade.errors import BadInput

HISTORY_LEN = 100  # MinerPerformanceTracker(store_last_n_predictions=100)
MCC_WINDOW = 100
ACC_WINDOW = 10
REWARD_EXPONENT = 3.0
NO_ANSWER = -1.0  # the synapse's default prediction: a miner that did not answer in time
EMA_ALPHA = 0.05


class WindowMetrics(msgspec.Struct, frozen=True):
    accuracy: float
    mcc: float


EMPTY = WindowMetrics(0.0, 0.0)


def _mcc(tp: float, tn: float, fp: float, fn: float) -> float:
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0.0 else (tp * tn - fp * fn) / denominator


def window_metrics(predictions: Sequence[float], labels: Sequence[int]) -> WindowMetrics:
    """The validator's `get_metrics` (accuracy and MCC only) over one window of history."""
    preds = np.asarray(predictions, dtype=np.float64)
    labs = np.asarray(labels, dtype=np.float64)
    keep = preds != NO_ANSWER
    preds, labs = preds[keep], labs[keep]
    if preds.size == 0:
        return EMPTY
    if not np.isfinite(preds).all():
        return EMPTY  # sklearn's input validation raises on NaN / inf
    rounded = np.round(preds)
    union = np.union1d(labs, rounded)
    if union.size > 2 or (union.size == 2 and 1.0 not in union):
        return EMPTY  # precision_score(average="binary", pos_label=1) raises
    accuracy = float(np.mean(rounded == labs))
    if np.unique(labs).size > 1 and np.unique(rounded).size > 1:
        tp = float(np.sum((rounded == 1) & (labs == 1)))
        tn = float(np.sum((rounded == 0) & (labs == 0)))
        fp = float(np.sum((rounded == 1) & (labs == 0)))
        fn = float(np.sum((rounded == 0) & (labs == 1)))
        mcc = max(0.0, _mcc(tp, tn, fp, fn))
    else:
        mcc = 0.0
    return WindowMetrics(accuracy=accuracy, mcc=mcc)


def penalty(prediction: float) -> float:
    """`compute_penalty`: 0 outside [0, 1]. NaN compares false both ways, so it is not penalised."""
    return 0.0 if (prediction < 0.0 or prediction > 1.0) else 1.0


def reward_stream(predictions: Sequence[float], labels: Sequence[int]) -> np.ndarray:
    """Rewards, challenge by challenge, of one miner answering `predictions` from a fresh history.

    Vectorised with running sums (windows of plain 0/1 answers); windows that contain an
    answer sklearn would reject fall back to `window_metrics`, so the result is identical to
    `MinerHistory.score` called in a loop.
    """
    preds = np.asarray(predictions, dtype=np.float64)
    labs = np.asarray(labels)
    if preds.ndim != 1 or labs.shape != preds.shape:
        raise BadInput(f"predictions and labels must be 1-D and equally long, got {preds.shape} and {labs.shape}")
    if not np.isin(labs, (0, 1)).all():
        raise BadInput("labels must be 0 or 1")
    n = preds.size
    if n == 0:
        return np.zeros(0)
    labs = labs.astype(np.float64)
    kept = preds != NO_ANSWER
    with np.errstate(invalid="ignore"):
        rounded = np.where(kept, np.round(preds), 0.0)
    odd = kept & ~np.isin(rounded, (0.0, 1.0))  # NaN/inf or rounded outside {0, 1}

    def window_sums(flags: np.ndarray, window: int) -> np.ndarray:
        c = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
        idx = np.arange(1, n + 1)
        return c[idx] - c[np.maximum(idx - window, 0)]

    def windowed(window: int) -> tuple[np.ndarray, np.ndarray]:
        ok = kept & ~odd
        tp = window_sums(ok & (rounded == 1) & (labs == 1), window).astype(np.float64)
        tn = window_sums(ok & (rounded == 0) & (labs == 0), window).astype(np.float64)
        fp = window_sums(ok & (rounded == 1) & (labs == 0), window).astype(np.float64)
        fn = window_sums(ok & (rounded == 0) & (labs == 1), window).astype(np.float64)
        total = tp + tn + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(total > 0, (tp + tn) / np.maximum(total, 1), 0.0)
            denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            mcc = np.where(denom > 0, (tp * tn - fp * fn) / np.where(denom > 0, denom, 1), 0.0)
        mcc = np.maximum(mcc, 0.0)
        for t in np.nonzero(window_sums(odd, window))[0]:  # rare: exact slow path
            lo = max(0, t + 1 - window)
            m = window_metrics(preds[lo : t + 1], labs[lo : t + 1])
            acc[t], mcc[t] = m.accuracy, m.mcc
        return acc, mcc

    acc10, _ = windowed(ACC_WINDOW)
    _, mcc100 = windowed(MCC_WINDOW)
    with np.errstate(invalid="ignore"):
        pen = np.where((preds < 0.0) | (preds > 1.0), 0.0, 1.0)
    rewards = ((0.5 * mcc100 + 0.5 * acc10) * pen) ** REWARD_EXPONENT
    return np.where(kept, rewards, 0.0)


class RewardSummary(msgspec.Struct, frozen=True):
    n_challenges: int
    n_shuffles: int
    mean_reward: float  # mean over all challenges and shuffles, history starting empty
    steady_mean_reward: float  # mean over challenges after the first 100 (full MCC window)
    steady_std_across_shuffles: float
    p05_reward: float  # 5th percentile of per-challenge rewards (steady part)
    final_ema_score: float  # validator's score EMA (alpha 0.05) at the end, mean over shuffles
    answer_rate: float  # fraction of challenges answered (not -1)


def simulate_reward(
    predictions: Sequence[float],
    labels: Sequence[int],
    seed: int | np.random.Generator = 0,
    n_shuffles: int = 20,
    *,
    length: int | None = None,
) -> RewardSummary:
    """Expected reward per challenge if a validator sent these images in random order.

    Each shuffle draws `length` challenges (default: the dataset size) by permuting the
    dataset (and cycling it when `length` is longer), then scores them with `reward_stream`.
    The miner is assumed to be queried at every challenge (as a tracked uid would be).
    """
    preds = np.asarray(predictions, dtype=np.float64)
    labs = np.asarray(labels)
    if preds.shape != labs.shape or preds.ndim != 1 or preds.size == 0:
        raise BadInput(f"need equally long, non-empty 1-D predictions and labels, got {preds.shape} and {labs.shape}")
    if n_shuffles < 1:
        raise BadInput(f"n_shuffles must be >= 1, got {n_shuffles}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    length = preds.size if length is None else int(length)
    if length < 1:
        raise BadInput(f"length must be >= 1, got {length}")
    all_rewards, steady_means, steady_parts, emas = [], [], [], []
    for _ in range(n_shuffles):
        order = np.concatenate([rng.permutation(preds.size) for _ in range(-(-length // preds.size))])[:length]
        rewards = reward_stream(preds[order], labs[order])
        all_rewards.append(rewards)
        steady = rewards[MCC_WINDOW:] if rewards.size > MCC_WINDOW else rewards
        steady_parts.append(steady)
        steady_means.append(float(steady.mean()))
        # The validator's recurrence score = a * r + (1 - a) * score from 0, in closed form.
        decay = (1.0 - EMA_ALPHA) ** np.arange(rewards.size - 1, -1, -1, dtype=np.float64)
        emas.append(float(EMA_ALPHA * np.dot(decay, rewards)))
    steady_all = np.concatenate(steady_parts)
    return RewardSummary(
        n_challenges=length,
        n_shuffles=n_shuffles,
        mean_reward=float(np.mean(np.concatenate(all_rewards))),
        steady_mean_reward=float(np.mean(steady_means)),
        steady_std_across_shuffles=float(np.std(steady_means)),
        p05_reward=float(np.percentile(steady_all, 5)),
        final_ema_score=float(np.mean(emas)),
        answer_rate=float(np.mean(preds != NO_ANSWER)),
    )
