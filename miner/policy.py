"""Who gets served, how often, and in which order.

- `Blacklist`: unknown hotkey, no validator permit, stake below the minimum -> 403 with a reason.
- `RateLimiter`: a token bucket per caller hotkey -> 429.
- `Scheduler`: runs decode + cascade jobs on a few threads. When more jobs wait than the threads
  can finish before their deadlines, the highest stake goes first; the lowest-stake waiter is
  refused (503) when the queue is full, and a job that can no longer finish in time is refused
  instead of being run late.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from streetcascade.errors import Overloaded

from .errors import Blacklisted, RateLimited
from .metagraph import MetagraphView, Neuron

log = logging.getLogger(__name__)


class Blacklist:
    def __init__(self, view: MetagraphView, min_stake: float, force_validator_permit: bool = True, allow_non_registered: bool = False):
        self.view = view
        self.min_stake = min_stake
        self.force_validator_permit = force_validator_permit
        self.allow_non_registered = allow_non_registered
        self._anonymous = Neuron("", -1, 0.0, False)

    def check(self, hotkey: str) -> Neuron:
        if not self.view.ready:
            raise Overloaded("metagraph not loaded yet")
        neuron = self.view.get(hotkey)
        if neuron is None:
            if self.allow_non_registered:
                return self._anonymous
            raise Blacklisted(f"hotkey {hotkey[:48]} is not registered on netuid {self.view.snapshot.netuid}", "unknown")
        if self.force_validator_permit and not neuron.validator_permit:
            raise Blacklisted(f"hotkey {hotkey} (uid {neuron.uid}) has no validator permit", "no_permit")
        if neuron.stake < self.min_stake:
            raise Blacklisted(f"hotkey {hotkey} (uid {neuron.uid}) has stake {neuron.stake:.1f}, below the minimum {self.min_stake:.1f}", "low_stake")
        return neuron


class RateLimiter:
    """Token bucket per key: `rate_per_s` tokens a second, at most `burst` saved up."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000):
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: str) -> None:
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited(f"rate limit: more than {self.rate:g}/s (burst {self.burst:g}) from {key}")
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys:
            # drop full buckets (idle callers); they start full again anyway
            for k in [k for k, (t, l) in self._buckets.items() if t + (now - l) * self.rate >= self.burst]:
                del self._buckets[k]


class _Job:
    __slots__ = ("priority", "deadline", "fn", "args", "future", "seq")

    def __init__(self, priority, deadline, fn, args, future, seq):
        self.priority = priority
        self.deadline = deadline
        self.fn = fn
        self.args = args
        self.future = future
        self.seq = seq


class Scheduler:
    """Priority admission in front of a thread pool. Runs on one event loop; no locks."""

    def __init__(self, threads: int = 1, max_queue: int = 64, prior_ms: float = 20.0, on_reject: Callable[[str], None] | None = None):
        self.threads = threads
        self.max_queue = max_queue
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cascade")
        self.busy = 0
        self.service_ms = prior_ms  # EWMA of a job's wall time
        self._heap: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self.on_reject = on_reject or (lambda reason: None)

    @property
    def waiting(self) -> int:
        return len(self._heap)

    @property
    def in_flight(self) -> int:
        return self.busy + len(self._heap)

    async def submit(self, priority: float, deadline: float, fn: Callable[..., Any], *args) -> Any:
        """Run fn(*args, deadline) on a worker thread; `deadline` is time.monotonic() seconds."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        job = _Job(priority, deadline, fn, args, future, next(self._seq))
        if self.busy < self.threads and not self._heap:
            self._start(job)
        else:
            # Jobs ahead of this one: all busy ones and every waiter with higher priority.
            ahead = self.busy + sum(1 for _, _, j in self._heap if j.priority >= priority)
            wait_s = (ahead / self.threads + 1) * self.service_ms / 1000.0
            if time.monotonic() + wait_s > deadline:
                self.on_reject("deadline")
                raise Overloaded(f"overloaded: {self.in_flight} in flight, ~{wait_s * 1000:.0f} ms to serve, past the deadline")
            heapq.heappush(self._heap, (-priority, job.seq, job))
            if len(self._heap) > self.max_queue:
                # refuse the lowest priority (latest among equals)
                worst = max(self._heap)
                self._heap.remove(worst)
                heapq.heapify(self._heap)
                self.on_reject("queue_full")
                worst[2].future.set_exception(Overloaded(f"overloaded: queue full ({self.max_queue}), lowest stake refused"))
        return await future

    def _start(self, job: _Job) -> None:
        self.busy += 1
        started = time.perf_counter()
        cf = self.pool.submit(job.fn, *job.args, job.deadline)
        loop = job.future.get_loop()

        def done(cf_):
            loop.call_soon_threadsafe(self._finish, job, cf_, started)

        cf.add_done_callback(done)

    def _finish(self, job: _Job, cf, started: float) -> None:
        self.busy -= 1
        self.service_ms = 0.8 * self.service_ms + 0.2 * (time.perf_counter() - started) * 1000.0
        if not job.future.done():
            exc = cf.exception()
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(cf.result())
        self._dispatch()

    def _dispatch(self) -> None:
        now = time.monotonic()
        while self._heap and self.busy < self.threads:
            _, _, job = heapq.heappop(self._heap)
            if job.future.done():  # caller went away
                continue
            if now + self.service_ms / 1000.0 > job.deadline:
                self.on_reject("deadline")
                job.future.set_exception(Overloaded("overloaded: waited past the point where the answer could arrive in time"))
                continue
            self._start(job)

    def close(self, wait: bool = True) -> None:
        for _, _, job in self._heap:
            if not job.future.done():
                job.future.set_exception(Overloaded("shutting down"))
        self._heap.clear()
        self.pool.shutdown(wait=wait)
