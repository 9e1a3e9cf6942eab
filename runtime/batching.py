"""Micro-batching for stage 1: requests that arrive within `window_ms` of each other run as
one batch (up to the engine's max_batch), so several slots in flight on a GPU share one launch.

`BatchingStage` wraps a stage and has its interface. The first caller of an empty window
becomes the leader: it waits until the window closes or the batch is full, runs the wrapped
stage once on everyone's images (on its own thread and slot), and hands each caller its
scores. A failure of the batch is every member's failure (the cascade then falls back as it
does for one image). With one slot (one thread) nothing can join, so the window is skipped.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np

from streetcascade.errors import InferenceError


class _Batch:
    def __init__(self):
        self.images: list[np.ndarray] = []
        self.owners: list[tuple[int, int]] = []  # (start, count) per member
        self.full = threading.Event()
        self.done = threading.Event()
        self.scores: np.ndarray | None = None
        self.error: BaseException | None = None


class BatchingStage:
    def __init__(self, stage, window_ms: float, max_batch: int, slots: int):
        self.stage = stage
        self.name = stage.name
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self.enabled = window_ms > 0 and slots > 1 and max_batch > 1
        self._lock = threading.Lock()
        self._open: _Batch | None = None
        self.batches = 0
        self.batched_images = 0

    def __getattr__(self, name):  # thresholds, input_size, logits, roles ... of the wrapped stage
        return getattr(self.stage, name)

    @property
    def expected_ms(self) -> float:
        return self.stage.expected_ms + (self.window_s * 1000.0 if self.enabled else 0.0)

    def exits(self, probability: float) -> bool:
        return self.stage.exits(probability)

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not self.enabled or len(images) >= self.max_batch:
            return self.stage.score(images)
        with self._lock:
            batch = self._open
            leader = batch is None or len(batch.images) + len(images) > self.max_batch
            if leader:
                batch = self._open = _Batch()
            start = len(batch.images)
            batch.images.extend(images)
            if len(batch.images) >= self.max_batch:
                batch.full.set()
        if leader:
            batch.full.wait(self.window_s)
            with self._lock:
                if self._open is batch:
                    self._open = None  # later arrivals start the next batch
            try:
                batch.scores = np.asarray(self.stage.score(batch.images))
                self.batches += 1
                self.batched_images += len(batch.images)
            except BaseException as exc:  # noqa: BLE001 - every member sees it
                batch.error = exc
            finally:
                batch.done.set()
        else:
            deadline = time.monotonic() + self.window_s + 60.0
            batch.done.wait(max(0.0, deadline - time.monotonic()))
        if batch.error is not None:
            raise batch.error
        if batch.scores is None:
            raise InferenceError(f"stage {self.name}: the batch this request joined did not finish")
        return batch.scores[start : start + len(images)]
