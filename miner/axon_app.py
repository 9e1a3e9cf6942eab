"""The ASGI app serving one of our hotkeys (bittensor 9.x axon wire format).

Order of work per request, cheapest first, so strangers and garbage cost microseconds:
route (404) -> size from Content-Length (413) -> headers (400) -> blacklist by metagraph (403)
-> signature + nonce (401) -> rate limit (429) -> read + parse body (400/413/422) -> base64 (400)
-> cache -> priority admission (503) -> decode + cascade on a worker thread (400/413/500).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import time

from streetcascade.errors import BadInput, InferenceError, Overloaded, StreetcascadeError

from .auth import Verifier
from .cache import Answer, image_key
from .errors import Blacklisted, BodyTooLarge, UnknownSynapse
from .lograte import RateLimitedLog
from .policy import RateLimiter
from .state import MinerState
from .wire import (
    SYNAPSES,
    ReplyAxon,
    SynapseReply,
    body_hash,
    decode_body,
    encode_error,
    encode_reply,
    parse_headers,
    response_headers,
)

log = logging.getLogger(__name__)

_STATUS_KIND = {401: "auth", 403: "blacklist", 404: "route", 413: "too_large", 429: "rate", 503: "overload"}


class _ClientGone(Exception):
    pass


class AxonApp:
    """The ASGI app serving one of our hotkeys."""

    def __init__(self, state: MinerState, hotkey_ss58: str, verifier: Verifier | None = None):
        self.state = state
        self.hotkey = hotkey_ss58
        limits = state.limits
        self.verifier = verifier or Verifier(hotkey_ss58, max_timeout_s=limits.max_timeout_s)
        self.rate = RateLimiter(state.policy.rate_per_s, state.policy.rate_burst)
        self._counters: dict[tuple[str, int], object] = {}
        self._body_hashes = {name: body_hash(fields) for name, fields in SYNAPSES.items()}
        self.rlog = RateLimitedLog(log)

    def _count(self, route: str, status: int):
        key = (route, status)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.state.metrics.requests.labels(route, str(status), self.hotkey)
        child.inc()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    msg = await receive()
                    if msg["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif msg["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        state = self.state
        t0 = time.perf_counter()
        route = scope["path"].lstrip("/")
        known = route in SYNAPSES
        route_label = route if known else "other"
        state.in_flight += 1
        state.metrics.in_flight.inc()
        status, message, payload = 500, "Internal Server Error", None
        try:
            try:
                payload = await self._handle(scope, receive, route, known, t0)
                status, message = 200, "Success"
            except StreetcascadeError as exc:
                status, message = exc.http_status, str(exc)
                if isinstance(exc, Blacklisted):
                    state.metrics.blacklisted.labels(exc.reason).inc()
                kind = _STATUS_KIND.get(status, "input" if status < 500 else "internal")
                state.metrics.rejected.labels(kind).inc()
                if status >= 500:
                    # 503s before authentication (metagraph not loaded) can come from anyone.
                    self.rlog.warning(f"{status}:{type(exc).__name__}", "%s %s: %s", status, route_label, message)
                else:
                    log.debug("%s %s: %s", status, route_label, message)
            except _ClientGone:
                self._count(route_label, 499)
                return
            except Exception as exc:  # never let a bug take the process down or leak a traceback
                # One traceback per kind of bug per minute, not one per request.
                self.rlog.error(f"internal:{type(exc).__name__}", "internal error on %s", route_label, exc_info=True)
                status, message = 500, f"Internal Server Error ({type(exc).__name__})"
                state.metrics.rejected.labels("internal").inc()
            elapsed = time.perf_counter() - t0
            if status == 200:
                payload.axon.process_time = elapsed
                body = encode_reply(payload)
            else:
                body = encode_error(message)
            await send({"type": "http.response.start", "status": status, "headers": response_headers(status, message, elapsed, len(body), self.hotkey)})
            await send({"type": "http.response.body", "body": body})
            self._count(route_label, status)
            state.metrics.latency.labels(route_label).observe(time.perf_counter() - t0)
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.dec()

    async def _handle(self, scope, receive, route: str, known: bool, t0: float) -> SynapseReply:
        state = self.state
        if not known:
            raise UnknownSynapse(f"synapse {route[:64]!r} not found; this axon serves {sorted(SYNAPSES)}")
        if scope["method"] != "POST":
            raise UnknownSynapse(f"{scope['method']} /{route}: only POST is served")
        h = parse_headers(scope["headers"])
        limits = state.limits
        if h.content_length is not None and h.content_length > limits.max_body_bytes:
            raise BodyTooLarge(f"body is {h.content_length} bytes, over the limit of {limits.max_body_bytes}")
        neuron = state.blacklist.check(h.dendrite_hotkey)
        self.verifier.verify(h, self._body_hashes[route])
        self.rate.check(h.dendrite_hotkey)
        data = await self._read_body(receive, limits.max_body_bytes)
        syn = decode_body(data)
        try:
            image = base64.b64decode(syn.image, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("image is not valid base64") from None
        if len(image) > limits.max_image_bytes:
            raise BodyTooLarge(f"image is {len(image)} bytes, over the limit of {limits.max_image_bytes}")
        if not image:
            raise BadInput("image is empty")
        timeout = min(h.timeout_s or limits.default_timeout_s, limits.max_timeout_s)
        # When the caller stops waiting; the cascade keeps the safety margin before it.
        deadline = time.monotonic() - (time.perf_counter() - t0) + timeout
        answer = await self._answer(image, neuron.stake, deadline)
        p = answer.probability
        if not (isinstance(p, float) and math.isfinite(p)):
            raise InferenceError(f"cascade produced a non-finite probability {p!r}")
        p = min(1.0, max(0.0, p))
        state.metrics.answers.observe(p)
        return SynapseReply(
            name=route,
            timeout=h.timeout_s,
            prediction=p,
            testnet_label=syn.testnet_label,
            computed_body_hash=self._body_hashes[route],
            dendrite=syn.dendrite,
            axon=ReplyAxon(200, "Success", 0.0, self.hotkey),
            model_url=syn.model_url if route == "ExtendedImageSynapse" else None,
        )

    async def _answer(self, image: bytes, priority: float, deadline: float) -> Answer:
        state = self.state
        cache = state.cache
        key = image_key(image)
        cached = cache.get(key)
        if cached is not None:
            state.metrics.cache_hits.inc()
            return cached
        pending = cache.inflight.get(key) if cache.max_entries > 0 else None
        if pending is not None:  # the same image is being decided right now
            state.metrics.cache_hits.inc()
            return await asyncio.shield(pending)
        state.metrics.cache_misses.inc()
        fut = asyncio.get_running_loop().create_future()
        if cache.max_entries > 0:
            cache.inflight[key] = fut
        try:
            t_decode = time.perf_counter()
            rgb = await asyncio.get_running_loop().run_in_executor(state.decode_pool, state.decode, image)
            state.metrics.stage_latency.labels("decode").observe(time.perf_counter() - t_decode)
            decision = await state.scheduler.submit(priority, deadline, state.job, rgb)
            answer = Answer(float(decision.probability), decision.stage, decision.fallback)
            for stage, ms in decision.timings_ms.items():
                if stage != "total":
                    state.metrics.stage_latency.labels(stage).observe(ms / 1000.0)
            if decision.fallback:
                state.metrics.fallbacks.inc()
                self.rlog.log(logging.INFO, "fallback", "fallback: answered by %s (a later stage could not finish in time)", decision.stage)
            cache.put(key, answer)
            fut.set_result(answer)
            return answer
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else Overloaded("cancelled"))
                fut.exception()  # mark retrieved: followers may not exist
            raise
        finally:
            cache.inflight.pop(key, None)

    @staticmethod
    async def _read_body(receive, limit: int) -> bytes:
        chunks = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
