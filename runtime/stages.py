"""The stage interface and the stage-kind registry.

A stage is anything with `name`, `expected_ms`, `score(images) -> probabilities` and
`exits(p)`. A later stage that reads evidence rather than judging on its own (OCR) may instead
offer `score_given(images, priors) -> probabilities`: the cascade hands it the earlier stage's
probabilities to move (streetcascade/evidence.py's LogOddsRule). A stage that runs
elsewhere (runtime/ray_stage.py: a Ray Serve deployment) sets `takes_time_left = True`; the
cascade then passes `time_left_ms=` (None without a deadline) to bound its wait. The manifest names each stage's kind; `build_stage` looks the kind up here and
hands it the stage's manifest entry, its loaded engines (by graph role) and its thresholds.
Adding a stage kind (OCR, a VLM judge) is one file with a class that has `roles` and
`from_manifest`, and one line in `STAGE_KINDS`.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from streetcascade.errors import EngineMismatch
from streetcascade.manifest import StageEntry
from streetcascade.registry import Registry
from streetcascade.settings import StageThresholds

from .backends.base import Engine

STAGE_KINDS = Registry("stage kind (upgrade streetcascade to run it)", {
    "classifier": "streetcascade.runtime.classifier:ClassifierStage",
    "ocr": "streetcascade.runtime.ocr_stage:OcrStage",
    "vlm": "streetcascade.runtime.vlm_stage:VlmStage",
}, unknown=EngineMismatch, unavailable=None)


class Stage(Protocol):
    name: str

    @property
    def expected_ms(self) -> float: ...

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def exits(self, probability: float) -> bool: ...


class LatencyTracker:
    """Exponentially weighted mean of a stage's measured latency per image (starts from a prior)."""

    def __init__(self, prior_ms: float, alpha: float = 0.2):
        self.mean_ms = prior_ms
        self.alpha = alpha

    def add(self, ms: float) -> None:
        self.mean_ms = (1 - self.alpha) * self.mean_ms + self.alpha * ms


def build_stage(entry: StageEntry, engines: dict[str, Engine], thresholds: StageThresholds) -> Stage:
    cls = STAGE_KINDS.get(entry.kind)
    missing = sorted(set(cls.roles) - set(engines))
    if missing:
        raise EngineMismatch(f"stage {entry.name} ({entry.kind}) has no graph for role(s) {', '.join(missing)}")
    return cls.from_manifest(entry, engines, thresholds)
