"""The miner process: one uvicorn server per (hotkey, port) plus a metrics/health server, in
one event loop, all sharing one `MinerState` (miner/state.py). Handles SIGINT/SIGTERM itself
and shuts down gracefully (in-flight requests finish). The request path is miner/axon_app.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import threading
from contextlib import nullcontext
from dataclasses import dataclass

import uvicorn

from streetcascade.errors import ConfigError

from .auth import Verifier
from .axon_app import AxonApp
from .config import EdgeConfig
from .edge import ConnectionGuard, EdgeProtocol, connection_cap, raise_open_files_limit
from .ops_app import OpsApp
from .state import MinerState

log = logging.getLogger(__name__)

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
        edge: EdgeConfig = EdgeConfig(),
    ):
        self.state = state
        self.axons = axons
        self.host = host
        self.metrics_host = metrics_host
        self.metrics_port = metrics_port
        self.graceful_shutdown_s = graceful_shutdown_s
        self.refresh_metagraph = refresh_metagraph
        self.edge = edge
        self.guard: ConnectionGuard | None = None
        self.apps = [AxonApp(state, a.hotkey_ss58, a.verifier) for a in axons]
        self.ports: list[int] = []
        self.ops_port: int | None = None
        self._servers: list[_Server] = []
        self._stop = None
        self._loop = None
        self._thread = None
        self.ready = threading.Event()

    def _make(self, app, guard: ConnectionGuard) -> _Server:
        config = uvicorn.Config(
            app,
            lifespan="off",
            # uvicorn's httptools protocol with our edge limits (miner/edge.py); one guard for
            # all axon ports, so the per-IP and total caps hold for the whole process.
            http=functools.partial(EdgeProtocol, guard=guard),
            ws="none",
            loop="none",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=self.edge.idle_timeout_s,
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
        soft, hard = raise_open_files_limit(self.edge.nofile)
        self.guard = ConnectionGuard(self.edge, connection_cap(self.edge, soft), state.metrics)
        log.info(
            "open-files limit %d (hard %s): at most %d client connections, %d per IP",
            soft,
            "unlimited" if hard == -1 else hard,
            self.guard.max_connections,
            self.edge.max_connections_per_ip,
        )
        sockets = [bind_socket(self.host, a.port) for a in self.axons]
        self.ports = [s.getsockname()[1] for s in sockets]
        pairs = list(zip(self.apps, sockets))
        if self.metrics_port is not None:
            ops_sock = bind_socket(self.metrics_host, self.metrics_port)
            self.ops_port = ops_sock.getsockname()[1]
            pairs.append((OpsApp(state), ops_sock))
        # The private ops server gets its own small guard: an attack on the axons must not
        # lock the operator out of /metrics and /health.
        ops_guard = ConnectionGuard(self.edge, 64)
        self._servers = [self._make(app, self.guard if i < len(self.axons) else ops_guard) for i, (app, _) in enumerate(pairs)]
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
            await loop.run_in_executor(None, state.close)
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
