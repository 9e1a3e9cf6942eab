"""Classification metrics on probabilities: accuracy, MCC, AUC, confusion matrix, calibration.

A probability is turned into an answer the way the validator does: `np.round(p)`, so
p = 0.5 means "no roadwork". All functions take `labels` (0/1) and `probs` (floats in [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import numpy as np

from streetcascade.errors import BadInput


def _check(labels: Sequence[int], probs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise BadInput(f"labels and probs must be 1-D and equally long, got {y.shape} and {p.shape}")
    if not np.isin(y, (0, 1)).all():
        raise BadInput("labels must be 0 or 1")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise BadInput("probabilities must be finite and within [0, 1]")
    return y.astype(np.int64), p


def hard_answers(probs: np.ndarray) -> np.ndarray:
    return np.round(probs).astype(np.int64)  # validator rounding: 0.5 -> 0


class Confusion(msgspec.Struct, frozen=True):
    tn: int
    fp: int
    fn: int
    tp: int

    def as_matrix(self) -> list[list[int]]:
        """Rows = true label (0, 1), columns = answer (0, 1), like sklearn."""
        return [[self.tn, self.fp], [self.fn, self.tp]]


def confusion(labels: Sequence[int], probs: Sequence[float]) -> Confusion:
    y, p = _check(labels, probs)
    a = hard_answers(p)
    return Confusion(
        tn=int(np.sum((y == 0) & (a == 0))),
        fp=int(np.sum((y == 0) & (a == 1))),
        fn=int(np.sum((y == 1) & (a == 0))),
        tp=int(np.sum((y == 1) & (a == 1))),
    )


def accuracy(labels: Sequence[int], probs: Sequence[float]) -> float:
    c = confusion(labels, probs)
    total = c.tn + c.fp + c.fn + c.tp
    return (c.tn + c.tp) / total if total else 0.0


def mcc(labels: Sequence[int], probs: Sequence[float]) -> float:
    """Matthews correlation of the rounded answers; 0 when a row or column of the matrix is empty."""
    c = confusion(labels, probs)
    denominator = math.sqrt((c.tp + c.fp) * (c.tp + c.fn) * (c.tn + c.fp) * (c.tn + c.fn))
    return 0.0 if denominator == 0 else (c.tp * c.tn - c.fp * c.fn) / denominator


def auc(labels: Sequence[int], probs: Sequence[float]) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted as half; NaN for one class."""
    y, p = _check(labels, probs)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    ranks = np.empty(p.size, dtype=np.float64)
    # Average rank over each run of equal scores.
    boundaries = np.concatenate([[0], np.nonzero(np.diff(sorted_p))[0] + 1, [p.size]])
    for start, stop in zip(boundaries[:-1], boundaries[1:]):
        ranks[order[start:stop]] = 0.5 * (start + stop - 1) + 1.0
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


class ReliabilityBins(msgspec.Struct, frozen=True):
    edges: list[float]  # n_bins + 1 edges over [0, 1]
    count: list[int]
    mean_prob: list[float]  # mean predicted probability in the bin (NaN when empty)
    frac_positive: list[float]  # observed fraction of label 1 in the bin (NaN when empty)


def reliability_bins(labels: Sequence[int], probs: Sequence[float], n_bins: int = 10) -> ReliabilityBins:
    """Equal-width bins over [0, 1]; p = 1.0 falls in the last bin."""
    y, p = _check(labels, probs)
    if n_bins < 1:
        raise BadInput(f"n_bins must be >= 1, got {n_bins}")
    edges = np.round(np.linspace(0.0, 1.0, n_bins + 1), 12)
    which = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    sum_p = np.bincount(which, weights=p, minlength=n_bins)
    sum_y = np.bincount(which, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        frac = np.where(count > 0, sum_y / count, np.nan)
    return ReliabilityBins(edges.tolist(), count.tolist(), mean_p.tolist(), frac.tolist())


def expected_calibration_error(labels: Sequence[int], probs: Sequence[float], n_bins: int = 10) -> float:
    """ECE: count-weighted mean |observed frequency - mean probability| over the bins."""
    bins = reliability_bins(labels, probs, n_bins)
    total = sum(bins.count)
    if total == 0:
        return 0.0
    return float(
        sum(c * abs(f - m) for c, f, m in zip(bins.count, bins.frac_positive, bins.mean_prob) if c > 0) / total
    )


def log_loss(labels: Sequence[int], probs: Sequence[float], eps: float = 1e-7) -> float:
    y, p = _check(labels, probs)
    if y.size == 0:
        return 0.0
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def brier(labels: Sequence[int], probs: Sequence[float]) -> float:
    y, p = _check(labels, probs)
    return float(np.mean((p - y) ** 2)) if y.size else 0.0
