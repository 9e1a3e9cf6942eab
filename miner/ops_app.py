"""The private ops server's app: Prometheus metrics and a health check."""

from __future__ import annotations

import msgspec

from .state import MinerState


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
