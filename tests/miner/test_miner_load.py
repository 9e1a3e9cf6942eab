"""Bounded loopback load: N concurrent signed requests for a while; nothing dropped, p99 reported.

Default 32 connections for 5 s; STREETCASCADE_LOAD_SECONDS=30 (and -m slow) for the long run."""

import asyncio
import os
import time
import uuid

import numpy as np
import pytest

from bench.dendrite_client import RawConnection, build_request
from streetcascade.miner.config import LimitsConfig, PolicyConfig

VALIDATOR_TIMEOUT_MS = 9000  # a later answer scores like none (the subnet's protocol, not a speed claim)


async def load(port, keys, image_b64, connections: int, seconds: float):
    lat, statuses = [], {}

    async def worker():
        conn = await RawConnection.open("127.0.0.1", port)
        u = str(uuid.uuid4())
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            raw = build_request(keys["validator"], keys["miner"].ss58_address, image_b64, port=port, uuid=u)  # signed now
            t = time.perf_counter()
            status, _, _ = await conn.request(raw)
            lat.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1
        await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return lat, statuses, time.perf_counter() - t0


def run_load(server_factory, keys, image_b64, seconds):
    srv = server_factory(policy=PolicyConfig(rate_per_s=1e6, rate_burst=10**6, max_queue=256), limits=LimitsConfig(cache_entries=0))
    lat, statuses, wall = asyncio.run(load(srv.ports[0], keys, image_b64, 32, seconds))
    ms = np.array(lat) * 1000
    print(f"\nload: 32 connections, {wall:.1f} s, {len(lat)} requests, {len(lat) / wall:.0f} req/s, "
          f"p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms, statuses {statuses}")
    assert statuses == {200: len(lat)}  # nothing dropped or refused
    assert len(lat) > 32 * 2  # every connection kept being served
    assert ms.max() < VALIDATOR_TIMEOUT_MS  # every answer in time to count
    return srv


def test_load_short(server_factory, keys, image_b64):
    run_load(server_factory, keys, image_b64, float(os.environ.get("STREETCASCADE_LOAD_SECONDS", "5")))


@pytest.mark.slow
def test_load_30s(server_factory, keys, image_b64):
    srv = run_load(server_factory, keys, image_b64, 30.0)
    assert srv.state.in_flight == 0
