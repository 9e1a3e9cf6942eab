"""The axon: a lean ASGI app per hotkey on uvicorn, all sharing one loaded cascade.

Order of work per request, cheapest first, so strangers and garbage cost microseconds:
route (404) -> size from Content-Length (413) -> headers (400) -> blacklist by metagraph (403)
-> signature + nonce (401) -> rate limit (429) -> read + parse body (400/413/422) -> base64 (400)
-> cache -> priority admission (503) -> decode + cascade on a worker thread (400/413/500).

`MinerServer` runs one uvicorn server per (hotkey, port) plus a metrics/health server in one
event loop, handles SIGINT/SIGTERM itself and shuts down gracefully (in-flight requests finish).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import signal
import socket
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass

import msgspec
import uvicorn

from streetcascade.errors import BadInput, InferenceError, Overloaded, StreetcascadeError
from streetcascade.runtime.cascade import Cascade, Decision
from streetcascade.runtime.images import ImageLimits, decode_image

from .auth import Verifier
from .cache import Answer, AnswerCache, image_key
from .config import LimitsConfig, PolicyConfig
from .errors import Blacklisted, BodyTooLarge, UnknownSynapse
from .metagraph import MetagraphView
from .metrics import MinerMetrics
from .policy import Blacklist, RateLimiter, Scheduler
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

try:  # uvicorn's fast HTTP parser, when present (the miner extra installs it)
    import httptools  # noqa: F401

    _HTTP_IMPL = "httptools"
except ImportError:  # pragma: no cover
    _HTTP_IMPL = "h11"

_STATUS_KIND = {401: "auth", 403: "blacklist", 404: "route", 413: "too_large", 429: "rate", 503: "overload"}


class _ClientGone(Exception):
    pass


class MinerState:
    """Everything the hotkeys share: the cascade, its threads, the cache, the metagraph, metrics."""

    def __init__(
        self,
        cascade: Cascade,
        view: MetagraphView,
        policy: PolicyConfig = PolicyConfig(),
        limits: LimitsConfig = LimitsConfig(),
        metrics: MinerMetrics | None = None,
        inference_threads: int = 1,
        safety_margin_ms: float = 300.0,
    ):
        self.cascade = cascade
        self.view = view
        self.policy = policy
        self.limits = limits
        self.metrics = metrics or MinerMetrics()
        self.safety_margin_s = safety_margin_ms / 1000.0
        self.blacklist = Blacklist(view, policy.min_stake, policy.force_validator_permit, policy.allow_non_registered)
        self.scheduler = Scheduler(inference_threads, policy.max_queue, on_reject=self._count_overload)
        self.cache = AnswerCache(limits.cache_entries)
        self.image_limits = ImageLimits(max_bytes=limits.max_image_bytes, max_pixels=limits.max_pixels)
        first = cascade.stages[0]
        self.draft_size = getattr(first, "input_size", None)
        self.in_flight = 0
        self.started_at = time.time()

    def _count_overload(self, reason: str) -> None:
        self.metrics.rejected.labels(f"overload_{reason}").inc()

    def job(self, image_bytes: bytes, deadline: float) -> Decision:
        """Decode + cascade on a worker thread; `deadline` is time.monotonic() seconds."""
        if time.monotonic() >= deadline:
            raise Overloaded("deadline passed before inference could start")
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
                    log.warning("%s %s: %s", status, route_label, message)
                else:
                    log.debug("%s %s: %s", status, route_label, message)
            except _ClientGone:
                self._count(route_label, 499)
                return
            except Exception as exc:  # never let a bug take the process down or leak a traceback
                log.exception("internal error on %s", route_label)
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
        deadline = time.monotonic() - (time.perf_counter() - t0) + timeout - state.safety_margin_s
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
            decision = await state.scheduler.submit(priority, deadline, state.job, image)
            answer = Answer(float(decision.probability), decision.stage, decision.fallback)
            for stage, ms in decision.timings_ms.items():
                if stage != "total":
                    state.metrics.stage_latency.labels(stage).observe(ms / 1000.0)
            if decision.fallback:
                state.metrics.fallbacks.inc()
                log.info("fallback: answered by %s (a later stage could not finish in time)", decision.stage)
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


class OpsApp:
    """GET /metrics (Prometheus) and GET /health (JSON; 503 until the metagraph is loaded)."""

    def __init__(self, state: MinerState):
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    msg = await receive()
                    await send({"type": msg["type"] + ".complete"})
                    if msg["type"] == "lifespan.shutdown":
                        return
            return
        path = scope["path"]
        if path == "/metrics":
            view = self.state.view
            self.state.metrics.metagraph_age.set(view.age_s if view.ready else -1)
            self.state.metrics.queue.set(self.state.scheduler.waiting)
            body, ctype = self.state.metrics.render()
            status = 200
        elif path in ("/health", "/healthz"):
            info = self.state.health()
            body, ctype = msgspec.json.encode(info), "application/json"
            status = 200 if info["metagraph_ready"] else 503
        else:
            body, ctype, status = b'{"message":"not found"}', "application/json", 404
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
    """uvicorn.Server without its own signal handling: MinerServer stops all servers together."""

    def capture_signals(self):
        return nullcontext()


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from streetcascade.errors import ConfigError

        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@dataclass
class AxonSpec:
    hotkey_ss58: str
    port: int
    verifier: Verifier | None = None


class MinerServer:
    """N axons (hotkey, port) + the ops server on one event loop, sharing one MinerState."""

    def __init__(
        self,
        state: MinerState,
        axons: list[AxonSpec],
        host: str = "0.0.0.0",
        metrics_host: str = "127.0.0.1",
        metrics_port: int | None = None,  # None = no ops server, 0 = any free port
        graceful_shutdown_s: float = 15.0,
        refresh_metagraph: bool = True,
    ):
        self.state = state
        self.axons = axons
        self.host = host
        self.metrics_host = metrics_host
        self.metrics_port = metrics_port
        self.graceful_shutdown_s = graceful_shutdown_s
        self.refresh_metagraph = refresh_metagraph
        self.apps = [AxonApp(state, a.hotkey_ss58, a.verifier) for a in axons]
        self.ports: list[int] = []
        self.ops_port: int | None = None
        self._servers: list[_Server] = []
        self._stop = None
        self._loop = None
        self._thread = None
        self.ready = threading.Event()

    def _make(self, app, sock) -> _Server:
        config = uvicorn.Config(
            app,
            lifespan="off",
            http=_HTTP_IMPL,
            loop="none",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=75,
            timeout_graceful_shutdown=self.graceful_shutdown_s,
            limit_concurrency=None,
            server_header=False,
            date_header=False,
        )
        return _Server(config)

    async def serve(self, install_signal_handlers: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        state = self.state
        if not state.view.ready:
            await loop.run_in_executor(None, state.view.refresh_once)
            if not state.view.ready:
                log.error("no metagraph yet (%s); serving 503 until a refresh succeeds", state.view.last_error)
        sockets = [bind_socket(self.host, a.port) for a in self.axons]
        self.ports = [s.getsockname()[1] for s in sockets]
        pairs = list(zip(self.apps, sockets))
        if self.metrics_port is not None:
            ops_sock = bind_socket(self.metrics_host, self.metrics_port)
            self.ops_port = ops_sock.getsockname()[1]
            pairs.append((OpsApp(state), ops_sock))
        self._servers = [self._make(app, sock) for app, sock in pairs]
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self.request_stop)
                except (NotImplementedError, RuntimeError):  # pragma: no cover
                    pass
        tasks = [asyncio.create_task(srv.serve(sockets=[sock])) for srv, (_, sock) in zip(self._servers, pairs)]
        refresher = asyncio.create_task(state.view.run(self._stop)) if self.refresh_metagraph else None
        for srv in self._servers:
            while not srv.started and not any(t.done() for t in tasks):
                await asyncio.sleep(0.01)
        for app, port in zip(self.apps, self.ports):
            log.info("axon for hotkey %s listening on %s:%d", app.hotkey, self.host, port)
        if self.ops_port is not None:
            log.info("metrics and health on http://%s:%d/metrics /health", self.metrics_host, self.ops_port)
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            log.info("shutting down: finishing in-flight requests (up to %.0f s)", self.graceful_shutdown_s)
            for srv in self._servers:
                srv.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
            if refresher is not None:
                await refresher
            await loop.run_in_executor(None, state.scheduler.close)
            if install_signal_handlers:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    try:
                        loop.remove_signal_handler(sig)
                    except (NotImplementedError, RuntimeError):  # pragma: no cover
                        pass
            log.info("stopped")

    def request_stop(self) -> None:
        if self._loop is None or self._stop is None:
            return
        if self._stop.is_set():  # second signal: stop waiting for connections
            for srv in self._servers:
                srv.force_exit = True
        self._loop.call_soon_threadsafe(self._stop.set)

    # -- running in a background thread (tests, benchmarks) --
    def start_in_thread(self, timeout_s: float = 20.0) -> "MinerServer":
        def run():
            try:
                import uvloop

                runner = uvloop.run
            except ImportError:  # pragma: no cover
                runner = asyncio.run
            runner(self.serve(install_signal_handlers=False))

        self._thread = threading.Thread(target=run, name="miner-server", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout_s):
            raise RuntimeError("miner server did not start")
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
