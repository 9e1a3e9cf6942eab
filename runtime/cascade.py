"""The cascade: stages in order, each either answers (its probability is outside its
uncertainty band) or hands the image on; always within a deadline.

Stages follow the interface in runtime/stages.py (stage 1 is a `ClassifierStage`); OCR and
VLM stages plug in behind the same interface.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Sequence

import msgspec
import numpy as np

from streetcascade.errors import BadInput, InferenceError, StreetcascadeError
from streetcascade.settings import RuntimeConfig

from .stages import Stage

log = logging.getLogger(__name__)


class Decision(msgspec.Struct, frozen=True):
    probability: float  # finite, in [0, 1]
    stage: str  # the stage whose answer this is
    timings_ms: dict[str, float]  # per stage run, plus "total"
    fallback: bool = False  # True when a later stage was skipped/failed and an earlier answer stands
    text: str = ""  # what an OCR stage read in the image (lines joined by " | ")

    @property
    def label(self) -> int:
        # np.round semantics, like the validators: 0.5 -> 0 ("no roadwork")
        return int(np.round(self.probability))


class Cascade:
    """`safety_margin_ms` is kept free at the end of every deadline: a later stage runs only if
    its expected time fits before deadline - margin. It is applied here and nowhere else."""

    def __init__(self, stages: Sequence[Stage], safety_margin_ms: float = RuntimeConfig().safety_margin_ms):
        if not stages:
            raise BadInput("a cascade needs at least one stage")
        self.stages = list(stages)
        self.safety_margin_ms = safety_margin_ms
        self.counters = {"decisions": 0, "fallbacks": 0, "stage_errors": 0}
        self._lock = threading.Lock()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def classify(self, image: np.ndarray, deadline_ms: float | None = None) -> Decision:
        return self.classify_batch([image], deadline_ms)[0]

    def classify_batch(self, images: Sequence[np.ndarray], deadline_ms: float | None = None) -> list[Decision]:
        """Decide every image. Stage 1 always runs (batched); later stages run only on images
        still undecided, and only while the deadline leaves time for them."""
        t_start = time.perf_counter()
        n = len(images)
        probs: list[float | None] = [None] * n
        stage_of: list[str | None] = [None] * n
        timings: list[dict[str, float]] = [{} for _ in range(n)]
        fallback = [False] * n
        texts = [""] * n
        pending = list(range(n))
        for index, stage in enumerate(self.stages):
            if not pending:
                break
            if index > 0 and deadline_ms is not None:
                elapsed = (time.perf_counter() - t_start) * 1000.0
                if elapsed + stage.expected_ms * len(pending) + self.safety_margin_ms > deadline_ms:
                    log.info("deadline: skipping stage %s for %d image(s) (expected %.0f ms each, %.0f ms left)", stage.name, len(pending),
                             stage.expected_ms, deadline_ms - elapsed - self.safety_margin_ms)
                    self._count(f"deadline_skips.{stage.name}", len(pending))  # per stage: how often the deadline could not hold it
                    for i in pending:
                        fallback[i] = True
                    break
            t0 = time.perf_counter()
            try:
                batch = [images[i] for i in pending]
                given = getattr(stage, "score_given", None)
                # A stage that can bound its own wait (a remote stage: runtime/ray_stage.py) is told
                # the time left: before the deadline for stage 1 (nothing earlier to fall back on),
                # before deadline - margin for a later stage.
                extra = {}
                if getattr(stage, "takes_time_left", False):
                    margin = self.safety_margin_ms if index > 0 else 0.0
                    extra["time_left_ms"] = None if deadline_ms is None else deadline_ms - margin - (t0 - t_start) * 1000.0
                # An evidence stage (OCR) moves the earlier probability instead of replacing it.
                scores = given(batch, [probs[i] for i in pending], **extra) if index > 0 and given is not None else stage.score(batch, **extra)
                notes = None
                if isinstance(scores, tuple):  # (probabilities, what the stage read per image)
                    scores, notes = scores
            except BadInput:
                raise
            except Exception as exc:  # a stage failing must not lose an earlier answer
                self._count("stage_errors")
                if index == 0:
                    if isinstance(exc, StreetcascadeError):
                        raise
                    raise InferenceError(f"stage {stage.name} failed: {exc}") from exc
                if isinstance(exc, StreetcascadeError):  # ours carry a one-line message (e.g. a remote stage's timeout)
                    log.warning("stage %s failed: %s; keeping earlier answers", stage.name, exc)
                else:
                    log.exception("stage %s failed; keeping earlier answers", stage.name)
                for i in pending:
                    fallback[i] = True
                break
            per_image_ms = (time.perf_counter() - t0) * 1000.0 / len(pending)
            still = []
            for k, (i, p) in enumerate(zip(pending, scores)):
                timings[i][stage.name] = per_image_ms
                if notes is not None and notes[k]:
                    texts[i] = notes[k]
                p = float(p)
                if not math.isfinite(p):
                    self._count("stage_errors")
                    log.warning("stage %s gave a non-finite probability", stage.name)
                    if probs[i] is None and index == len(self.stages) - 1:
                        raise InferenceError(f"stage {stage.name} produced a non-finite probability")
                    if probs[i] is not None:
                        fallback[i] = True
                        continue  # keep the earlier answer, stop here
                    still.append(i)
                    continue
                probs[i] = min(1.0, max(0.0, p))
                stage_of[i] = stage.name
                if not stage.exits(p) and index < len(self.stages) - 1:
                    still.append(i)
            pending = still
        total_ms = (time.perf_counter() - t_start) * 1000.0
        decisions = []
        for i in range(n):
            if probs[i] is None:
                raise InferenceError("no stage produced a finite probability")
            if fallback[i]:
                self._count("fallbacks")
            timings[i]["total"] = total_ms
            decisions.append(Decision(probs[i], stage_of[i], timings[i], fallback[i], texts[i]))
        with self._lock:
            self.counters["decisions"] += n
        if deadline_ms is not None and total_ms > deadline_ms:
            log.warning("cascade took %.1f ms, over its deadline of %.1f ms", total_ms, deadline_ms)
        return decisions

