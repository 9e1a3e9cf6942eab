"""Server overhead, side by side: our miner vs a real bittensor 9.12.2 Axon, same instant model.

    python -m bench.miner_server [--requests 8000] [--concurrency 32] [--skip-axon]

Both servers run as subprocesses on 127.0.0.1 (ours via `streetcascade serve` with
`engine = "fake"`, the cache off so every request decodes the JPEG and runs the model; the Axon
from a throw-away venv, see bench/btvenv.py). The client (this process) sends pre-signed 9.x
requests over keep-alive HTTP/1.1: first one at a time (p50/p99 latency), then `concurrency`
connections at once (requests/s). Every request carries a full signature and a fresh,
increasing nonce, and every reply must be 200 with a prediction in [0, 1].
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid as uuid_mod
from pathlib import Path

import msgspec
import numpy as np

from .dendrite_client import RawConnection, build_request

VALIDATOR_URI = "//Alice"
MINER_URI = "//Bob"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg_b64(size: int = 224, seed: int = 0) -> str:
    """A photo-like 224 x 224 JPEG (smooth gradients, a block, mild sensor noise): ~15 KB, the
    size class of the validators' re-encoded 224 x 224 challenge images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    arr = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1).astype(np.float32)
    arr[size // 4 : size // 2, size // 3 : size * 2 // 3] = (230, 120, 20)  # a traffic-cone orange block
    arr += rng.normal(0, 6, arr.shape)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout_s} s")


def write_miner_config(tmp: Path, port: int, validator_ss58: str, threads: int = 1) -> Path:
    from bittensor_wallet import Keypair, Wallet

    wallet = Wallet(name="bench", hotkey="miner", path=str(tmp / "wallets"))
    wallet.set_hotkey(Keypair.create_from_uri(MINER_URI), encrypt=False, overwrite=True)
    cfg = tmp / "miner.toml"
    cfg.write_text(
        f"""
host = "127.0.0.1"
metrics_port = 0
log_level = "WARNING"

[[hotkeys]]
port = {port}
hotkey_file = "{tmp / 'wallets' / 'bench' / 'hotkeys' / 'miner'}"

[engine]
engine = "fake"

[runtime]
slots = {threads}

[chain]
metagraph = "static"
[[chain.static_neurons]]
hotkey = "{validator_ss58}"
stake = 5000.0

[policy]
rate_per_s = 1000000.0
rate_burst = 1000000
max_queue = 1024

[limits]
cache_entries = 0
"""
    )
    return cfg


async def _phase(port: int, requests: list[list[bytes]]) -> dict:
    """One connection per inner list, each sending its requests in order; all connections at once."""
    conns = [await RawConnection.open("127.0.0.1", port) for _ in requests]
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def worker(conn: RawConnection, batch: list[bytes]):
        for raw in batch:
            t = time.perf_counter()
            try:
                status, _, body = await conn.request(raw)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - t)
            if status != 200:
                key = f"{status} {body[:80]!r}"
                errors[key] = errors.get(key, 0) + 1
                continue
            p = msgspec.json.decode(body).get("prediction")
            if not (isinstance(p, float) and 0.0 <= p <= 1.0):
                errors["bad prediction"] = errors.get("bad prediction", 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c, b) for c, b in zip(conns, requests)))
    wall = time.perf_counter() - t0
    for c in conns:
        await c.close()
    lat = np.array(latencies) * 1000.0 if latencies else np.array([float("nan")])
    sent = sum(len(b) for b in requests)
    return {
        "sent": sent,
        "ok": sent - sum(errors.values()),
        "errors": errors,
        "wall_s": wall,
        "rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def _presign(validator, miner_ss58: str, port: int, image: str, connections: int, per_conn: int) -> list[list[bytes]]:
    out = []
    for _ in range(connections):
        uuid = str(uuid_mod.uuid4())
        out.append([build_request(validator, miner_ss58, image, port=port, uuid=uuid, timeout=12.0) for _ in range(per_conn)])
    return out


def measure(port: int, miner_ss58: str, image: str, sequential: int, concurrent: int, concurrency: int) -> dict:
    from bittensor_wallet import Keypair

    validator = Keypair.create_from_uri(VALIDATOR_URI)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    # warm-up (connection setup, first decode, JIT-free but caches)
    run(_phase(port, _presign(validator, miner_ss58, port, image, 1, 20)))
    one = run(_phase(port, _presign(validator, miner_ss58, port, image, 1, sequential)))
    many = run(_phase(port, _presign(validator, miner_ss58, port, image, concurrency, max(1, concurrent // concurrency))))
    return {"one_in_flight": one, "concurrent": many}


def start_ours(tmp: Path, validator_ss58: str, threads: int, nofile: int = 0) -> tuple[subprocess.Popen, int]:
    """Our miner as a subprocess; `nofile` > 0 caps its open-files limit (soft and hard)."""
    port = free_port()
    cfg = write_miner_config(tmp, port, validator_ss58, threads)

    def limit():
        if nofile:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen([sys.executable, "-m", "streetcascade.miner.cli", "serve", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "ours.log", "w"), preexec_fn=limit)
    wait_port(port, proc)
    return proc, port


def start_axon(tmp: Path, validator_ss58: str) -> tuple[subprocess.Popen, int]:
    from .btvenv import ensure_bt_venv

    python = ensure_bt_venv("9.12.2")
    port = free_port()
    script = Path(__file__).with_name("bt_axon_fake.py")
    proc = subprocess.Popen([str(python), str(script), "--port", str(port), "--miner-uri", MINER_URI, "--validator", validator_ss58], stdout=subprocess.DEVNULL, stderr=open(tmp / "axon.log", "w"))
    wait_port(port, proc)
    return proc, port


def stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after `timeout_s`; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def run_benchmark(requests: int = 8000, concurrency: int = 32, sequential: int = 1000, axon_requests: int = 640,
                  axon_sequential: int = 200, skip_axon: bool = False, threads: int = 1, out=print) -> dict:
    from bittensor_wallet import Keypair

    validator_ss58 = Keypair.create_from_uri(VALIDATOR_URI).ss58_address
    miner_ss58 = Keypair.create_from_uri(MINER_URI).ss58_address
    image = jpeg_b64()
    results = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, port = start_ours(tmp, validator_ss58, threads)
        try:
            results["streetcascade"] = measure(port, miner_ss58, image, sequential, requests, concurrency)
        finally:
            stop(proc)
        if not skip_axon:
            proc, port = start_axon(tmp, validator_ss58)
            try:
                results["bittensor-9.12.2-axon"] = measure(port, miner_ss58, image, axon_sequential, axon_requests, concurrency)
            finally:
                stop(proc)
    out(f"machine: {os.cpu_count()} cores; client and server on the same machine; fake instant model; "
        f"pre-signed 9.x requests over keep-alive HTTP/1.1")
    out(f"{'server':24} {'p50@1 ms':>9} {'p99@1 ms':>9} {'req/s@' + str(concurrency):>10} {'p50@' + str(concurrency) + ' ms':>11} {'p99@' + str(concurrency) + ' ms':>11} {'sent':>6} {'errors':>6}")
    for name, r in results.items():
        one, many = r["one_in_flight"], r["concurrent"]
        errs = sum(one["errors"].values()) + sum(many["errors"].values())
        out(f"{name:24} {one['p50_ms']:9.3f} {one['p99_ms']:9.3f} {many['rps']:10.0f} {many['p50_ms']:11.2f} {many['p99_ms']:11.2f} {one['sent'] + many['sent']:6d} {errs:6d}")
        for phase in (one, many):
            if phase["errors"]:
                out(f"  errors: {phase['errors']}")
    if "bittensor-9.12.2-axon" in results:
        a, b = results["streetcascade"], results["bittensor-9.12.2-axon"]
        lat_ratio = b["one_in_flight"]["p50_ms"] / a["one_in_flight"]["p50_ms"]
        rps_ratio = a["concurrent"]["rps"] / b["concurrent"]["rps"]
        out(f"ratio: p50 at 1 in flight {lat_ratio:.1f}x lower, throughput at {concurrency} in flight {rps_ratio:.1f}x higher")
        results["ratio"] = {"p50": lat_ratio, "rps": rps_ratio}
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=8000, help="requests in the concurrent phase (ours)")
    ap.add_argument("--sequential", type=int, default=1000, help="requests one at a time (ours)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--axon-requests", type=int, default=640)
    ap.add_argument("--axon-sequential", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="inference threads in our server")
    ap.add_argument("--skip-axon", action="store_true", help="no bittensor venv: measure ours only")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args(argv)
    res = run_benchmark(args.requests, args.concurrency, args.sequential, args.axon_requests, args.axon_sequential, args.skip_axon, args.threads)
    if args.json:
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(res), indent=2))
    errors = sum(sum(p["errors"].values()) for k, r in res.items() if k != "ratio" for p in r.values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
