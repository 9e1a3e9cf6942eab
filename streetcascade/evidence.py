"""What an OCR stage is configured with (shared by compile, the manifest and the runtime; no
heavy imports): the roadwork vocabulary it looks for, and the rule by which what it reads moves
the earlier stage's probability.

`Vocabulary` (the `[evidence]` table of a stage): phrases per language, how close an OCR'd
match must be, and how much text counts as text at all. Matching itself (rapidfuzz) is in
runtime/evidence.py.

`LogOddsRule` (the `[combine]` table): the evidence adds a fixed amount to the earlier
probability's log-odds, by what was read: a roadwork phrase (`hit`), text without one
(`text_without_hit`), or no text (`no_text`). The defaults make a sure hit decisive from an
unsure prior (0.5 -> 0.98) and let text that is not about roadwork lean towards "no"
(0.5 -> 0.38). `fit` estimates the weights from labelled examples (the earlier probability,
what was read, the label) by logistic regression with the prior's log-odds as a fixed offset.

A judge stage (a VLM asked "is there road work?", streetcascade/vlm.py) gives a probability
instead of a reading: its log-odds, times `judge`, plus `judge_bias`, are added to the earlier
probability's. The defaults (1, 0) treat the judge as independent evidence at even odds (naive
Bayes); `fit_judge` estimates both from labelled examples the same way.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Annotated, Sequence

import msgspec
import numpy as np

# Work-zone phrases as they appear on signs, per language (ISO 639-1).
DEFAULT_TERMS: dict[str, list[str]] = {
    "en": ["ROAD WORK", "ROAD WORK AHEAD", "ROADWORKS", "ROAD WORKS AHEAD", "ROAD CLOSED", "LANE CLOSED", "LANE ENDS",
           "DETOUR", "DIVERSION", "WORK ZONE", "MEN AT WORK", "CONSTRUCTION", "UTILITY WORK AHEAD", "END ROAD WORK"],
    "de": ["BAUSTELLE", "STRASSENARBEITEN", "ARBEITSSTELLE", "UMLEITUNG", "FAHRBAHNVERENGUNG", "VOLLSPERRUNG", "BAUARBEITEN"],
    "fr": ["TRAVAUX", "ROUTE BARREE", "DEVIATION", "CHANTIER", "FIN DE CHANTIER"],
    "es": ["OBRAS", "EN OBRAS", "DESVIO", "CARRIL CERRADO", "TRABAJOS EN LA VIA", "FIN DE OBRAS"],
    "it": ["LAVORI IN CORSO", "CANTIERE", "DEVIAZIONE", "STRADA CHIUSA", "FINE LAVORI"],
    "nl": ["WERK IN UITVOERING", "WEGWERKZAAMHEDEN", "WEGWERKEN", "OMLEIDING"],
    "pl": ["ROBOTY DROGOWE", "OBJAZD", "UTRUDNIENIA W RUCHU"],
    "pt": ["OBRAS NA VIA", "TRABALHOS NA ESTRADA", "DESVIO", "OBRAS"],
}


def normalise(text: str) -> str:
    """Upper case, accents removed, everything but letters and digits turned into single spaces."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    plain = plain.upper().replace("ß", "SS")
    return re.sub(r"[^0-9A-Z]+", " ", plain).strip()


class Vocabulary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `[evidence]` table: phrases per language and how close a match must be."""

    terms: dict[str, list[str]] = msgspec.field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_TERMS.items()})
    min_score: Annotated[float, msgspec.Meta(ge=50.0, le=100.0)] = 85.0
    # Fewer letters and digits than this in the whole text: no text (no decoder runs).
    min_text_chars: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3

    def __post_init__(self):
        if not self.terms:
            raise ValueError("terms: at least one language with phrases is needed")
        for lang, phrases in self.terms.items():
            if not re.fullmatch(r"[a-z]{2}", lang):
                raise ValueError(f"terms: {lang!r} is not a two-letter language code")
            if not phrases:
                raise ValueError(f"terms.{lang}: no phrases")
            for p in phrases:
                if len(normalise(p)) < 3:
                    raise ValueError(f"terms.{lang}: phrase {p!r} has fewer than 3 letters or digits")

    def has_text(self, text: str) -> bool:
        return sum(c.isalnum() for c in text) >= self.min_text_chars


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
    # Judge stages: weight of the judge's log-odds, and a constant added with it.
    judge: Weight = 1.0
    judge_bias: Weight = 0.0

    def weight(self, has_text: bool, hit: bool) -> float:
        if hit:
            return self.hit
        return self.text_without_hit if has_text else self.no_text

    def combine(self, prior: float, has_text: bool, hit: bool) -> float:
        return sigmoid(logit(prior) + self.weight(has_text, hit))

    def combine_judge(self, prior: float, p_yes: float) -> float:
        """The earlier probability moved by a judge's p(yes)."""
        return sigmoid(logit(prior) + self.judge * logit(p_yes) + self.judge_bias)

    @classmethod
    def fit_judge(cls, priors: Sequence[float], p_yes: Sequence[float], labels: Sequence[int], l2: float = 0.1, steps: int = 50) -> "LogOddsRule":
        """Maximum-likelihood `judge` and `judge_bias` (small L2 pull towards the defaults 1, 0)
        by Newton's method, the prior's log-odds as a fixed offset; the OCR weights keep their
        defaults."""
        offset = np.array([logit(float(p)) for p in priors])
        z_judge = np.array([logit(float(p)) for p in p_yes])
        y = np.asarray(labels, dtype=np.float64)
        if len(y) == 0:
            raise ValueError("no examples to fit the combination rule on")
        if not (len(offset) == len(z_judge) == len(y)):
            raise ValueError(f"priors, p_yes and labels differ in length ({len(offset)}, {len(z_judge)}, {len(y)})")
        x = np.stack([z_judge, np.ones_like(z_judge)], axis=1)
        w = _fit_logistic(x, offset, y, np.array([1.0, 0.0]), l2, steps)
        return cls(judge=float(w[0]), judge_bias=float(w[1]))

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
        w = _fit_logistic(x, offset, y, np.zeros(3), l2, steps)
        default = cls()
        present = x.sum(axis=0) > 0
        return cls(
            hit=float(w[0]) if present[0] else default.hit,
            text_without_hit=float(w[1]) if present[1] else default.text_without_hit,
            no_text=float(w[2]) if present[2] else default.no_text,
        )


def _fit_logistic(x: np.ndarray, offset: np.ndarray, y: np.ndarray, anchor: np.ndarray, l2: float, steps: int) -> np.ndarray:
    """Weights w of p = sigmoid(offset + x @ w) by maximum likelihood with an L2 pull towards
    `anchor`, by Newton's method; clipped to +-20 so a separable case stays finite."""
    w = anchor.astype(np.float64)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(offset + x @ w)))
        grad = x.T @ (p - y) + l2 * (w - anchor)
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return np.clip(w, -20.0, 20.0)
