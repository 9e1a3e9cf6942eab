"""Stage kind "classifier": one graph, uint8 NHWC RGB batch in, one roadwork logit per image out."""

from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np

from streetcascade.manifest import GraphIO, StageEntry, TensorSpec
from streetcascade.settings import StageThresholds

from .backends.base import Engine
from .images import resize_to
from .stages import LatencyTracker

INPUT_NAME = "pixels"
OUTPUT_NAME = "logit"


def classifier_io(input_size: int, max_batch: int) -> GraphIO:
    """The contract every classifier graph keeps, whatever the family or backend."""
    return GraphIO(
        inputs=[TensorSpec(INPUT_NAME, ["batch", input_size, input_size, 3], "uint8")],
        outputs=[TensorSpec(OUTPUT_NAME, ["batch"], "float32")],
        max_batch=max_batch,
    )


def sigmoid(x) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # overflow-free


class ClassifierStage:
    roles = ("classifier",)

    def __init__(self, name: str, engine: Engine, input_size: int, thresholds: StageThresholds = StageThresholds(), prior_ms: float = 50.0):
        self.name = name
        self.engine = engine
        self.input_size = input_size
        self.thresholds = thresholds
        self.latency = LatencyTracker(prior_ms)
        # One slot per thread: slots hold reusable IO buffers and are not shared.
        self._local = threading.local()

    @classmethod
    def from_manifest(cls, entry: StageEntry, engines: dict[str, Engine], thresholds: StageThresholds) -> "ClassifierStage":
        return cls(entry.name, engines["classifier"], entry.input_size, thresholds)

    @property
    def expected_ms(self) -> float:
        return self.latency.mean_ms

    def _slot(self):
        slot = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = self.engine.slot()
        return slot

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Raw logits (before the temperature), any image size, any count."""
        if not len(images):
            return np.empty(0, dtype=np.float64)
        batch = np.stack([resize_to(img, self.input_size) for img in images])
        t0 = time.perf_counter()
        out = self._slot().logits(batch)
        self.latency.add((time.perf_counter() - t0) * 1000.0 / len(images))
        return out

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return sigmoid(self.logits(images) / self.thresholds.temperature)

    def exits(self, probability: float) -> bool:
        return self.thresholds.exits(probability)
