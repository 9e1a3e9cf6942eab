"""What every hotkey's axon shares: the cascade and the threads that run it, the answer
cache, the metagraph view, the admission policy and the metrics."""

from __future__ import annotations

import time

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
        self.image_limits = ImageLimits(max_bytes=limits.max_image_bytes, max_pixels=limits.max_pixels, formats=limits.image_formats)
        first = cascade.stages[0]
        self.draft_size = getattr(first, "input_size", None)
        self.in_flight = 0
        self.started_at = time.time()

    def _count_overload(self, reason: str) -> None:
        self.metrics.rejected.labels(f"overload_{reason}").inc()

    def job(self, image_bytes: bytes, deadline: float) -> Decision:
        """Decode + cascade on a worker thread. `deadline` (time.monotonic() seconds) is when the
        caller stops waiting; the cascade keeps its safety margin free before it."""
        if time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed before inference could start")
        rgb = decode_image(image_bytes, self.image_limits, draft_size=self.draft_size)
        remaining_ms = (deadline - time.monotonic()) * 1000.0
        return self.cascade.classify(rgb, deadline_ms=max(remaining_ms, 0.0))

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
