"""The miner under hostile traffic, measured: validator latency with and without an attack in
the same run, and the server's memory while strangers try to exhaust it.

    python -m bench.miner_attack [--idle 1100] [--requests 60]

Our miner runs as a subprocess (`streetcascade serve`, fake engine, default [edge] limits) on
127.0.0.1. A validator sends signed requests over fresh connections from 127.0.0.1, one at a
time. The attackers come from 127.0.0.2-127.0.0.254 (Linux routes 127/8 to loopback) and, all
at once: hold `--idle` idle connections spread over many source IPs (reconnecting when closed),
send request heads one byte a second (slowloris), stream endless header lines (8 connections
offering 32 MB each), and promise bodies they never send. Printed: validator p50/p99/max with
no attack and under attack, the ratio, refused connections by reason, and the server's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .dendrite_client import build_request
from .miner_server import MINER_URI, VALIDATOR_URI, jpeg_b64, start_ours, stop


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_request(port: int, validator, miner_ss58: str, image: str) -> tuple[float, int]:
    raw = build_request(validator, miner_ss58, image, port=port)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += s.recv(65536)
    return time.perf_counter() - t0, int(head.split(b" ")[1])


def validator_phase(port: int, n: int, image: str) -> dict:
    from bittensor_wallet import Keypair

    validator = Keypair.create_from_uri(VALIDATOR_URI)
    miner = Keypair.create_from_uri(MINER_URI).ss58_address
    times, bad = [], 0
    for _ in range(n):
        dt, status = one_request(port, validator, miner, image)
        times.append(dt * 1000)
        bad += status != 200
        time.sleep(0.05)
    a = np.array(times)
    return {"n": n, "non_200": bad, "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


async def _attack(port: int, idle: int, stop_evt: threading.Event, stats: dict) -> None:
    loop = asyncio.get_running_loop()

    def source(i: int) -> str:
        return f"127.0.0.{2 + i % 253}"

    async def hold(i: int):
        while not stop_evt.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source(i), 0))
                stats["opened"] += 1
                await reader.read(100)  # returns when the server closes it
                stats["closed_by_server"] += 1
                writer.close()
            except OSError:
                stats["refused"] += 1
                await asyncio.sleep(0.2)

    async def slowloris(i: int):
        head = b"POST /ImageSynapse HTTP/1.1\r\nhost: x\r\nx-a: " + b"a" * 10000
        while not stop_evt.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source(i), 0))
                for b in head:
                    writer.write(bytes([b]))
                    await writer.drain()
                    await asyncio.sleep(1.0)
                    if stop_evt.is_set():
                        break
                writer.close()
            except OSError:
                await asyncio.sleep(0.2)

    async def flood(i: int):
        chunk = b"a" * (1 << 20)
        while not stop_evt.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source(i), 0))
                writer.write(b"POST /ImageSynapse HTTP/1.1\r\nx-junk: ")
                for _ in range(32):
                    writer.write(chunk)
                    await writer.drain()
                writer.close()
            except OSError:
                pass
            stats["floods"] += 1
            await asyncio.sleep(0.05)

    async def short_body(i: int):
        while not stop_evt.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source(i), 0))
                writer.write(b"POST /ImageSynapse HTTP/1.1\r\ncontent-length: 3000000\r\n\r\nabc")
                await reader.read(100)
                writer.close()
            except OSError:
                await asyncio.sleep(0.2)

    tasks = [loop.create_task(hold(i)) for i in range(idle)]
    tasks += [loop.create_task(slowloris(1000 + i)) for i in range(16)]
    tasks += [loop.create_task(flood(2000 + i)) for i in range(8)]
    tasks += [loop.create_task(short_body(3000 + i)) for i in range(16)]
    while not stop_evt.is_set():
        await asyncio.sleep(0.1)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def run(idle: int = 1100, requests: int = 60, nofile: int = 0, out=print) -> dict:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, idle * 2 + 256)), hard))
    from bittensor_wallet import Keypair

    image = jpeg_b64()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_ours(Path(tmp), Keypair.create_from_uri(VALIDATOR_URI).ss58_address, 1, nofile)
        try:
            validator_phase(port, 10, image)  # warm-up
            rss_start = rss_mb(proc.pid)
            quiet = validator_phase(port, requests, image)
            stats = {"opened": 0, "closed_by_server": 0, "refused": 0, "floods": 0}
            stop_evt = threading.Event()
            attacker = threading.Thread(target=lambda: asyncio.run(_attack(port, idle, stop_evt, stats)), daemon=True)
            peak = [rss_start]

            def sample():
                while not stop_evt.is_set():
                    peak[0] = max(peak[0], rss_mb(proc.pid))
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample, daemon=True)
            attacker.start()
            sampler.start()
            time.sleep(3.0)  # let the attack build up
            attacked = validator_phase(port, requests, image)
            stop_evt.set()
            attacker.join(30)
            sampler.join(5)
            time.sleep(1.0)
            rss_end = rss_mb(proc.pid)
        finally:
            stop(proc)
    result = {"server_nofile": nofile or "default", "quiet": quiet, "attacked": attacked, "attack": stats, "idle_target": idle,
              "rss_mb": {"start": rss_start, "peak": peak[0], "end": rss_end}}
    out(f"server open-files limit: {nofile or 'as inherited, raised to [edge] nofile'}")
    out("| validator requests | n | non-200 | p50 ms | p99 ms | max ms |")
    out("|---|---|---|---|---|---|")
    for name, r in (("no attack", quiet), ("under attack", attacked)):
        out(f"| {name} | {r['n']} | {r['non_200']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} |")
    out(f"\nunder attack / no attack, p50: {attacked['p50_ms'] / quiet['p50_ms']:.2f}x, p99: {attacked['p99_ms'] / quiet['p99_ms']:.2f}x")
    out(f"attack: {idle} idle holders over 253 source IPs, 16 slowloris, 8 x 32 MB header floods, 16 short bodies; "
        f"{stats['opened']} connections opened, {stats['closed_by_server']} closed by the server, {stats['floods']} floods cut")
    out(f"server RSS: {rss_start:.0f} MB at start, {peak[0]:.0f} MB peak under attack, {rss_end:.0f} MB after")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=int, default=1100, help="idle connections the attacker tries to hold")
    ap.add_argument("--requests", type=int, default=60, help="validator requests per phase")
    ap.add_argument("--nofile", type=int, default=0, help="cap the server's open-files limit (soft and hard), e.g. 1024")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    result = run(args.idle, args.requests, args.nofile)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
