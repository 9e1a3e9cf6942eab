"""The cascade: stages in order, each either answers (its probability is outside its
uncertainty band) or hands the image on; always within a deadline.

A stage is anything with `name`, `expected_ms`, `score(images) -> probabilities` and
`exits(p)`. Stage 1 is a `ClassifierStage` over one engine; OCR and VLM stages plug in
behind the same interface later.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Protocol, Sequence

import msgspec
import numpy as np

from streetcascade.errors import BadInput, DeadlineExceeded, InferenceError, StreetcascadeError

from .backends.base import Engine
from .images import resize_to

log = logging.getLogger(__name__)


class Decision(msgspec.Struct, frozen=True):
    probability: float  # finite, in [0, 1]
    stage: str  # the stage whose answer this is
    timings_ms: dict[str, float]  # per stage run, plus "total"
    fallback: bool = False  # True when a later stage was skipped/failed and an earlier answer stands

    @property
    def label(self) -> int:
        # np.round semantics, like the validators: 0.5 -> 0 ("no roadwork")
        return int(np.round(self.probability))


class Stage(Protocol):
    name: str

    @property
    def expected_ms(self) -> float: ...

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def exits(self, probability: float) -> bool: ...


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # overflow-free


class LatencyTracker:
    """Exponentially weighted mean of a stage's measured latency (starts from a prior)."""

    def __init__(self, prior_ms: float, alpha: float = 0.2):
        self.mean_ms = prior_ms
        self.alpha = alpha

    def add(self, ms: float) -> None:
        self.mean_ms = (1 - self.alpha) * self.mean_ms + self.alpha * ms


class ClassifierStage:
    """One binary classifier engine: uint8 NHWC batch in, a roadwork logit per image out."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        input_size: int,
        exit_low: float = 0.15,
        exit_high: float = 0.85,
        temperature: float = 1.0,
        prior_ms: float = 50.0,
        max_batch: int = 32,
    ):
        if not 0.0 <= exit_low <= exit_high <= 1.0:
            raise BadInput(f"stage {name}: need 0 <= exit_low <= exit_high <= 1, got {exit_low}, {exit_high}")
        if not temperature > 0:
            raise BadInput(f"stage {name}: temperature must be > 0, got {temperature}")
        self.name = name
        self.engine = engine
        self.input_size = input_size
        self.exit_low = exit_low
        self.exit_high = exit_high
        self.temperature = temperature
        self.max_batch = max_batch
        self.input_name = engine.inputs[0].name
        self.output_name = engine.outputs[0].name
        self.latency = LatencyTracker(prior_ms)
        # One slot per thread: slots hold reusable IO buffers and are not shared.
        self._local = threading.local()

    @property
    def expected_ms(self) -> float:
        return self.latency.mean_ms

    def _slot(self):
        slot = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = self.engine.slot()
        return slot

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty(len(images), dtype=np.float64)
        for start in range(0, len(images), self.max_batch):
            chunk = images[start : start + self.max_batch]
            batch = np.stack([resize_to(img, self.input_size) for img in chunk])
            t0 = time.perf_counter()
            logits = self._slot().infer({self.input_name: batch})[self.output_name]
            self.latency.add((time.perf_counter() - t0) * 1000.0 / len(chunk))
            out[start : start + len(chunk)] = sigmoid(np.asarray(logits, dtype=np.float64).reshape(-1) / self.temperature)
        return out

    def exits(self, probability: float) -> bool:
        return probability < self.exit_low or probability > self.exit_high


class Cascade:
    def __init__(self, stages: Sequence[Stage], safety_margin_ms: float = 0.0):
        if not stages:
            raise BadInput("a cascade needs at least one stage")
        self.stages = list(stages)
        self.safety_margin_ms = safety_margin_ms
        self.counters = {"decisions": 0, "fallbacks": 0, "stage_errors": 0}
        self._lock = threading.Lock()

    def _count(self, key: str) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + 1

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
        pending = list(range(n))
        for index, stage in enumerate(self.stages):
            if not pending:
                break
            if index > 0 and deadline_ms is not None:
                elapsed = (time.perf_counter() - t_start) * 1000.0
                if elapsed + stage.expected_ms * len(pending) + self.safety_margin_ms > deadline_ms:
                    log.info("deadline: skipping stage %s for %d image(s)", stage.name, len(pending))
                    for i in pending:
                        fallback[i] = True
                    break
            t0 = time.perf_counter()
            try:
                scores = stage.score([images[i] for i in pending])
            except BadInput:
                raise
            except Exception as exc:  # a stage failing must not lose an earlier answer
                self._count("stage_errors")
                if index == 0:
                    if isinstance(exc, StreetcascadeError):
                        raise
                    raise InferenceError(f"stage {stage.name} failed: {exc}") from exc
                log.exception("stage %s failed; keeping earlier answers", stage.name)
                for i in pending:
                    fallback[i] = True
                break
            per_image_ms = (time.perf_counter() - t0) * 1000.0 / len(pending)
            still = []
            for i, p in zip(pending, scores):
                timings[i][stage.name] = per_image_ms
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
            decisions.append(Decision(probs[i], stage_of[i], timings[i], fallback[i]))
        with self._lock:
            self.counters["decisions"] += n
        if deadline_ms is not None and total_ms > deadline_ms:
            log.warning("cascade took %.1f ms, over its deadline of %.1f ms", total_ms, deadline_ms)
        return decisions


__all__ = ["Cascade", "ClassifierStage", "Decision", "Stage", "DeadlineExceeded", "sigmoid"]
