"""What every hotkey's axon shares: the cascade and the threads that run it, the answer
cache, the metagraph view, the admission policy and the metrics."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from streetcascade.errors import DeadlineExceeded
from streetcascade.runtime.cascade import Cascade, Decision
from streetcascade.runtime.images import ImageLimits, decode_image
from streetcascade.settings import RuntimeConfig

from .cache import AnswerCache
from .config import LimitsConfig, PolicyConfig
from .metagraph import MetagraphView
from .metrics import MinerMetrics
from .policy import Blacklist, Scheduler


class MinerState:
    """Everything the hotkeys share: the cascade, its threads, the cache, the metagraph, metrics."""

    def __init__(
        self,
        cascade: Cascade,
        view: MetagraphView,
        policy: PolicyConfig = PolicyConfig(),
        limits: LimitsConfig = LimitsConfig(),
        metrics: MinerMetrics | None = None,
        slots: int = RuntimeConfig().slots,
    ):
        self.cascade = cascade
        self.view = view
        self.policy = policy
        self.limits = limits
        self.metrics = metrics or MinerMetrics()
        self.blacklist = Blacklist(view, policy.min_stake, policy.force_validator_permit, policy.allow_non_registered)
        # One inference thread per slot: each thread runs the cascade through its own engine slots.
        self.scheduler = Scheduler(slots, policy.max_queue, on_reject=self._count_overload)
        self.cache = AnswerCache(limits.cache_entries)
        # Decoding (CPU-bound, untrusted bytes) runs here, outside the inference threads, so it
        # overlaps inference; one thread keeps a flood of large images from taking every core.
        self.decode_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self.image_limits = ImageLimits(max_bytes=limits.max_image_bytes, max_pixels=limits.max_pixels, formats=limits.image_formats)
        first = cascade.stages[0]
        self.draft_size = getattr(first, "input_size", None)
        self.in_flight = 0
        self.started_at = time.time()

    def _count_overload(self, reason: str) -> None:
        self.metrics.rejected.labels(f"overload_{reason}").inc()

    def decode(self, image_bytes: bytes) -> np.ndarray:
        """Untrusted bytes -> RGB, with the limits (runs on the decode thread, before the
        inference queue: one request's decode overlaps another's inference)."""
        return decode_image(image_bytes, self.image_limits, draft_size=self.draft_size)

    def job(self, image: bytes | np.ndarray, deadline: float) -> Decision:
        """The cascade on a worker thread (decoding first when given bytes). `deadline`
        (time.monotonic() seconds) is when the caller stops waiting; the cascade keeps its safety
        margin free before it."""
        if time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed before inference could start")
        rgb = self.decode(image) if isinstance(image, (bytes, bytearray, memoryview)) else image
        remaining_ms = (deadline - time.monotonic()) * 1000.0
        return self.cascade.classify(rgb, deadline_ms=max(remaining_ms, 0.0))

    def close(self) -> None:
        self.scheduler.close()
        self.decode_pool.shutdown(wait=True)

    def health(self) -> dict:
        view = self.view
        return {
            "status": "ok" if view.ready else "starting",
            "metagraph_ready": view.ready,
            "metagraph_age_s": round(view.age_s, 1) if view.ready else None,
            "metagraph_last_error": view.last_error,
            "in_flight": self.in_flight,
            "queue": self.scheduler.waiting,
            "cache_entries": len(self.cache),
            "cache_hits": self.cache.hits,
            "counters": dict(self.cascade.counters),
            "uptime_s": round(time.time() - self.started_at, 1),
        }
