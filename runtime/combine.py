"""How a later stage's evidence moves the probability an earlier stage gave.

`LogOddsRule`: the evidence adds a fixed amount to the earlier probability's log-odds, by
what was read: a roadwork phrase (`hit`), text without one (`text_without_hit`), or no text at
all (`no_text`). The defaults make a sure hit decisive from an unsure prior (0.5 -> 0.98) and
let text that is not about roadwork lean towards "no" (0.5 -> 0.38). `fit` estimates the three
weights from labelled examples (the earlier stage's probability, what was read, the label) by
logistic regression with the prior's log-odds as a fixed offset, which is how `tune` will fit
them alongside the exit thresholds.
"""

from __future__ import annotations

import math
from typing import Annotated, Sequence

import msgspec
import numpy as np

Weight = Annotated[float, msgspec.Meta(ge=-20.0, le=20.0)]


def logit(p: float, eps: float = 1e-6) -> float:
    p = min(1.0 - eps, max(eps, p))
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * x))


class LogOddsRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hit: Weight = 4.0
    text_without_hit: Weight = -0.5
    no_text: Weight = 0.0

    def weight(self, has_text: bool, hit: bool) -> float:
        if hit:
            return self.hit
        return self.text_without_hit if has_text else self.no_text

    def combine(self, prior: float, has_text: bool, hit: bool) -> float:
        return sigmoid(logit(prior) + self.weight(has_text, hit))

    @classmethod
    def fit(cls, priors: Sequence[float], has_text: Sequence[bool], hits: Sequence[bool], labels: Sequence[int],
            l2: float = 0.1, steps: int = 50) -> "LogOddsRule":
        """Maximum-likelihood weights (with a small L2 pull towards 0) by Newton's method;
        a weight whose case never occurs in the data stays at the default."""
        offset = np.array([logit(float(p)) for p in priors])
        hits_a = np.asarray(hits, dtype=bool)
        text_a = np.asarray(has_text, dtype=bool) & ~hits_a
        none_a = ~hits_a & ~text_a
        x = np.stack([hits_a, text_a, none_a], axis=1).astype(np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if len(y) == 0:
            raise ValueError("no examples to fit the combination rule on")
        w = np.zeros(3)
        for _ in range(steps):
            z = offset + x @ w
            p = 1.0 / (1.0 + np.exp(-z))
            grad = x.T @ (p - y) + l2 * w
            hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(3)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        w = np.clip(w, -20.0, 20.0)
        default = cls()
        present = x.sum(axis=0) > 0
        return cls(
            hit=float(w[0]) if present[0] else default.hit,
            text_without_hit=float(w[1]) if present[1] else default.text_without_hit,
            no_text=float(w[2]) if present[2] else default.no_text,
        )
