"""The HTTP edge: limits that hold for every connection before a request reaches the app
(and so before authentication), because the axon port is open to anyone.

uvicorn's httptools protocol has no limit on the size of a request head and no timer until a
response has been sent, so a stranger could hold connections (and the file descriptors behind
them) forever, or grow the process with one endless header line. `EdgeProtocol` adds, per
connection:

- a cap on open connections per client IP and in total (the total derived from the open-files
  limit, which `raise_open_files_limit` lifts at start); at the total cap the longest-idle
  connection is closed to admit a new one, and only when none is idle is the new one refused;
- an idle timer from accept and between requests, a timer for the request head from its first
  byte, and one for the body from the end of the head (408, then close);
- a cap on the bytes of a request head (431, then close);
- closing the connection when we answered before the request body arrived (e.g. a 413 from
  Content-Length or a 401), so the rest of a large body is never read. Such an answer says
  `Connection: close` (HTTP/1.1, RFC 9112 section 9.6): without it the answer reads as
  keep-alive, and a client that reuses the connection for its next request (HTTP/1.1 lets it;
  httpx does, and bittensor's dendrite pools connections in one aiohttp session) can send that
  request into a socket we are closing and lose it ("server disconnected" or a reset). A
  request whose body has fully arrived keeps its connection whatever the answer.

Memory held for a stranger's connection is bounded by max_head_bytes + one socket read (<=256
KiB) before its request reaches the app, and by uvicorn's 64 KiB read-pause mark while the app
has not read the body (the app reads a body only after authentication).
"""

from __future__ import annotations

import logging
import resource
from collections import OrderedDict

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import EdgeConfig
from .lograte import RateLimitedLog
from .metrics import MinerMetrics

log = logging.getLogger(__name__)

# Connection phases: what the timer currently bounds.
IDLE, HEAD, BODY, APP = "idle", "head", "body", "app"

# File descriptors kept free for everything that is not a client connection (engine files,
# logs, the chain websocket, wallets, the thread pool's pipes).
RESERVED_FDS = 256


def raise_open_files_limit(target: int) -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE towards `target` (never above the hard limit); return
    (soft, hard) as they are afterwards. `target` <= 0 leaves the limit alone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if target > 0 and want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:  # pragma: no cover - depends on the host's policy
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, want, exc)
    return soft, hard


def connection_cap(edge: EdgeConfig, soft_nofile: int) -> int:
    """The most client connections open at once: the configured cap, or what the open-files
    limit leaves after RESERVED_FDS."""
    if edge.max_connections:
        return edge.max_connections
    return max(64, soft_nofile - RESERVED_FDS)


class ConnectionGuard:
    """Counts open connections per client IP and in total, for all servers of one process.
    Runs on the event loop only (no locks)."""

    def __init__(self, edge: EdgeConfig, max_connections: int, metrics: MinerMetrics | None = None):
        self.edge = edge
        self.max_connections = max_connections
        self.metrics = metrics
        self.per_ip: dict[str, int] = {}
        self.total = 0
        # Connections with nothing in progress, longest idle first (see admit).
        self.idle: OrderedDict[EdgeProtocol, None] = OrderedDict()
        self.rlog = RateLimitedLog(log)

    def admit(self, ip: str) -> bool:
        count = self.per_ip.get(ip, 0)
        if count >= self.edge.max_connections_per_ip:
            self.refused("per_ip_cap")
            self.rlog.warning("per_ip_cap", "refusing connections from %s: %d open, the per-IP cap is %d", ip, count, self.edge.max_connections_per_ip)
            return False
        if self.total >= self.max_connections:
            # Full. Idle connections (nothing in progress) are the cheapest to give up: close the
            # one idle longest, so holding idle sockets from many IPs cannot lock validators out.
            victim = next(iter(self.idle), None)
            if victim is None:
                self.refused("connection_cap")
                self.rlog.warning(
                    "connection_cap",
                    "refusing connections: %d open, none idle, the cap is %d (from the open-files limit; raise it "
                    "with `ulimit -n` / LimitNOFILE or [edge] max_connections)",
                    self.total,
                    self.max_connections,
                )
                return False
            del self.idle[victim]
            self.refused("evicted_idle")
            self.rlog.warning("evicted_idle", "%d connections open (the cap): closing the longest idle to admit a new one", self.total)
            victim.transport.close()
        self.per_ip[ip] = count + 1
        self.total += 1
        if self.metrics is not None:
            self.metrics.connections.set(self.total)
        if self.total >= 0.8 * self.max_connections:
            self.rlog.warning("near_cap", "%d connections open, near the cap of %d", self.total, self.max_connections)
        return True

    def release(self, ip: str) -> None:
        count = self.per_ip.get(ip, 0) - 1
        if count > 0:
            self.per_ip[ip] = count
        else:
            self.per_ip.pop(ip, None)
        self.total -= 1
        if self.metrics is not None:
            self.metrics.connections.set(self.total)

    def refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.edge_closed.labels(reason).inc()


_REASON_PHRASE = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of this module. Build it with
    `functools.partial(EdgeProtocol, guard=...)` as uvicorn.Config's `http`."""

    def __init__(self, *args, guard: ConnectionGuard, **kwargs):
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.edge = guard.edge
        self._phase = IDLE
        self._timer = None
        self._head_bytes = 0
        self._ip = ""
        self._admitted = False
        # Whether the request being received may keep its connection once its body is in
        # (HTTP/1.1 and no `Connection: close` from the client); see on_headers_complete.
        self._keep_alive_wanted = False

    # -- connection --
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._ip = self.client[0] if self.client else "unknown"
        if not self.guard.admit(self._ip):
            transport.abort()  # frees the descriptor now; nothing is owed to this connection
            return
        self._admitted = True
        self._go_idle()

    def connection_lost(self, exc) -> None:
        self._cancel()
        self.guard.idle.pop(self, None)
        if self._admitted:
            self._admitted = False
            self.guard.release(self._ip)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.parser is None or self.transport.is_closing():
            return
        if self._phase in (IDLE, HEAD):
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "bad_http", "protocol upgrades are not served")
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, "bad_http", f"invalid HTTP request: {exc}")
            return
        if self._phase in (IDLE, HEAD) and self._head_bytes > self.edge.max_head_bytes:
            self._refuse(431, "head_too_large", f"request head over {self.edge.max_head_bytes} bytes")

    # -- parser callbacks: each phase arms its own timer --
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = HEAD
        self.guard.idle.pop(self, None)
        self._arm(self.edge.head_timeout_s, "head_timeout")

    def on_headers_complete(self) -> None:
        self._phase = BODY
        self._head_bytes = 0
        self._arm(self.edge.body_timeout_s, "body_timeout")
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:
            # An answer started before this request's body is in (413 from Content-Length, 401,
            # 403 ... all come before the app reads the body) closes the connection: reading the
            # rest would only cost us. uvicorn then writes `Connection: close` into that answer
            # and closes after it, so the client knows not to reuse the connection. The body
            # arriving first (the usual case, on_message_complete) gives keep-alive back.
            self._keep_alive_wanted = cycle.keep_alive
            cycle.keep_alive = False

    def on_message_complete(self) -> None:
        cycle = self.cycle
        super().on_message_complete()
        self._phase = APP
        self._cancel()  # the app bounds its own time (the request's deadline)
        if cycle is not None and not cycle.response_started:
            cycle.keep_alive = self._keep_alive_wanted

    def on_response_complete(self) -> None:
        # An answer given before its request's body was in has closed the connection already
        # (keep_alive=False above). With a pipelined request partly received, its own timer runs.
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._phase == APP and not pipelined:
            self._go_idle()

    # We never upgrade (ws="none"); uvicorn's version logs two warnings per such request.
    def _unsupported_upgrade_warning(self) -> None:
        pass

    # -- helpers --
    def _go_idle(self) -> None:
        self._phase = IDLE
        self._head_bytes = 0
        self.guard.idle[self] = None
        self.guard.idle.move_to_end(self)
        self._arm(self.edge.idle_timeout_s, "idle_timeout")

    def _arm(self, seconds: float, reason: str) -> None:
        self._cancel()
        self._timer = self.loop.call_later(seconds, self._on_timeout, reason)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self, reason: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase == IDLE:
            self.guard.refused(reason)
            self.transport.close()
        else:
            self._refuse(408, reason, f"request {self._phase} not received within its time limit")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer `status` (unless a response already started) and close the connection."""
        self.guard.refused(reason)
        self.guard.rlog.log(logging.DEBUG if reason.endswith("timeout") else logging.INFO, reason, "%s from %s: %s", status, self._ip, message)
        self._cancel()
        cycle = self.cycle
        started = cycle is not None and not cycle.response_complete and cycle.response_started
        if not started and not self.transport.is_closing():
            body = message.encode("ascii", "replace")[:200]
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, _REASON_PHRASE.get(status, b"Error"), len(body), body)
            )
        if cycle is not None and not cycle.response_complete:
            # The app (if it is waiting for the body) sees a disconnect; its reply goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()
