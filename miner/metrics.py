"""Prometheus metrics for the miner, in their own registry (several servers per process, tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 9.0, 15.0)


class MinerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "streetcascade_requests", "Requests by route, HTTP status and our hotkey", ["route", "status", "hotkey"], registry=r
        )
        self.latency = Histogram(
            "streetcascade_request_seconds", "Request wall time inside the server", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.stage_latency = Histogram(
            "streetcascade_stage_seconds", "Cascade stage time per image", ["stage"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.cache_hits = Counter("streetcascade_cache_hits", "Answers served from the image cache", registry=r)
        self.cache_misses = Counter("streetcascade_cache_misses", "Answers that needed inference", registry=r)
        self.fallbacks = Counter("streetcascade_fallbacks", "Answers from an earlier stage because a later one could not finish", registry=r)
        self.blacklisted = Counter("streetcascade_blacklisted", "Refused callers by reason", ["reason"], registry=r)
        self.rejected = Counter("streetcascade_rejected", "Refused requests by kind (auth, rate, overload, input)", ["kind"], registry=r)
        self.connections = Gauge("streetcascade_connections", "Open client connections (all ports)", registry=r)
        self.edge_closed = Counter(
            "streetcascade_edge_closed",
            "Connections refused or closed at the HTTP edge, by reason (timeouts, caps, oversized or invalid heads)",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge("streetcascade_in_flight", "Requests inside the server now", registry=r)
        self.queue = Gauge("streetcascade_queue", "Jobs waiting for an inference thread", registry=r)
        self.metagraph_age = Gauge("streetcascade_metagraph_age_seconds", "Age of the metagraph copy in use", registry=r)
        self.answers = Histogram(
            "streetcascade_probability", "Answered probabilities", buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), registry=r
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
