"""One-file artifact: pex vs shiv, side by side: size, build time, and start time from process
start to the first answered request, cold (nothing unpacked yet) and warm (second start).

    python -m bench.ship --engines engines/cpu-x86_64 [--runs 3] [--markdown]

Each artifact runs under a fresh virtualenv with nothing installed (the "bare Python" of an
operator's box), from an empty folder, with a throw-away HOME (so ~/.cache/pex or ~/.shiv start
empty), no PYTHONPATH and proxies pointing nowhere. The reference is `streetcascade serve` from
this checkout's venv with the same config and engine set. Starts alternate pex, shiv, reference
in rounds; medians are reported with their ratio to the reference. Also used by
tests/ship/test_deploy_scripts.py (`start_and_time`).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# VALIDATOR_URI: a validator in the static metagraph, MINER_URI: the miner's hotkey (well-known dev keys).
from .miner_server import MINER_URI, VALIDATOR_URI, free_port, stop

STOP_TIMEOUT_S = 30.0  # stop(): SIGTERM, then SIGKILL after this long


def miner_toml(port: int, metrics_port: int, wallet_path: str, validator_ss58: str) -> str:
    return f"""host = "127.0.0.1"
metrics_host = "127.0.0.1"
metrics_port = {metrics_port}
log_level = "INFO"
[[hotkeys]]
port = {port}
wallet_name = "w"
wallet_hotkey = "h"
wallet_path = "{wallet_path}"
[runtime]
safety_margin_ms = 0
[chain]
metagraph = "static"
[[chain.static_neurons]]
hotkey = "{validator_ss58}"
stake = 5000.0
"""


def write_wallet(path: Path) -> str:
    """The miner's hotkey as a bittensor wallet (w/h) under `path`; returns its SS58 address."""
    from bittensor_wallet import Keypair, Wallet

    keypair = Keypair.create_from_uri(MINER_URI)
    Wallet(name="w", hotkey="h", path=str(path)).set_hotkey(keypair, encrypt=False, overwrite=True)
    return keypair.ss58_address


def bare_python(dest: Path) -> Path:
    """A fresh virtualenv with nothing installed (not even pip), from this Python's base."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", "--without-pip", str(dest)], check=True, capture_output=True)
    return dest / "bin" / "python"


def isolated_env(home: Path, bare: Path) -> dict[str, str]:
    """No PYTHONPATH, a throw-away HOME, and no way to a package index or proxy."""
    dead = "http://127.0.0.1:9"
    return {"PATH": f"{bare.parent}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": str(home),
            "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "no_proxy": "", "NO_PROXY": "",
            "PIP_INDEX_URL": dead + "/simple", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}


def jpeg_b64(value: int = 200) -> str:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((224, 224, 3), value, np.uint8)).save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def ask_once(port: int, miner_ss58: str, image_b64: str, timeout_s: float = 10.0):
    """One signed 9.x request; the httpx response, or None when nothing listens yet."""
    import httpx
    from bittensor_wallet import Keypair

    from bench.dendrite_client import signed_headers, synapse_body

    validator = Keypair.create_from_uri(VALIDATOR_URI)
    body = synapse_body(image_b64, "ImageSynapse", 12.0, {}, {})
    try:
        return httpx.post(f"http://127.0.0.1:{port}/ImageSynapse", content=body, headers=signed_headers(validator, miner_ss58),
                          timeout=timeout_s, trust_env=False)
    except httpx.TransportError:
        return None


def start_and_time(cmd: list[str], env: dict, cwd: Path, port: int, miner_ss58: str, limit_s: float = 180.0):
    """Start `cmd`; poll with signed requests until one is answered 200. Returns (seconds from
    process start to that answer, the process, the answer's JSON)."""
    image = jpeg_b64()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while time.perf_counter() - t0 < limit_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}: {proc.stderr.read().decode()[-3000:]}")
        resp = ask_once(port, miner_ss58, image)
        if resp is not None and resp.status_code == 200:
            return time.perf_counter() - t0, proc, resp.json()
        time.sleep(0.05)
    stop(proc, STOP_TIMEOUT_S)
    raise RuntimeError(f"{cmd[:3]}: no answer within {limit_s:.0f} s")


def build(tool: str, engines: Path, config: Path, out: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("streetcascade")), "package", "--engines", str(engines), "--config", str(config),
                    "-o", str(out), "--tool", tool, "-q"], check=True, capture_output=True)
    return time.perf_counter() - t0, out.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", required=True, help="engine-set folder (e.g. engines/cpu-x86_64 from `make demo`)")
    ap.add_argument("--runs", type=int, default=3, help="cold + warm starts per artifact (rounds)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    from bittensor_wallet import Keypair

    work = Path(tempfile.mkdtemp(prefix="bench-ship-"))
    try:
        port, mport = free_port(), free_port()
        wallets = work / "wallets"
        miner = write_wallet(wallets)
        config = work / "miner.toml"
        config.write_text(miner_toml(port, mport, str(wallets), Keypair.create_from_uri(VALIDATOR_URI).ss58_address))
        sizes, builds = {}, {}
        for tool, suffix in (("pex", "pex"), ("shiv", "pyz")):
            builds[tool], sizes[tool] = build(tool, Path(args.engines), config, work / f"miner.{suffix}")
        bare = bare_python(work / "bare")
        starts: dict[str, list[float]] = {"pex cold": [], "pex warm": [], "shiv cold": [], "shiv warm": [], "reference": []}
        variants = ["pex", "shiv", "reference"]
        for r in range(args.runs):
            for variant in variants[r % 3:] + variants[: r % 3]:  # a different order each round
                if variant == "reference":
                    cmd = [str(Path(sys.executable).with_name("streetcascade")), "serve", "--config", str(config), "--engine",
                           str(Path(args.engines).resolve())]
                    seconds, proc, _ = start_and_time(cmd, {**os.environ, "PYTHONPATH": ""}, work, port, miner)
                    stop(proc, STOP_TIMEOUT_S)
                    starts["reference"].append(seconds)
                    continue
                suffix = {"pex": "pex", "shiv": "pyz"}[variant]
                home, run = work / f"home-{variant}-{r}", work / f"run-{variant}-{r}"
                home.mkdir()
                run.mkdir()
                shutil.copy(work / f"miner.{suffix}", run)
                env = isolated_env(home, bare)
                cmd = [str(bare), f"miner.{suffix}", "serve", "--state-dir", str(run / "state")]
                for kind in ("cold", "warm"):
                    seconds, proc, _ = start_and_time(cmd, env, run, port, miner)
                    stop(proc, STOP_TIMEOUT_S)
                    starts[f"{variant} {kind}"].append(seconds)
                shutil.rmtree(home, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in starts.items()}
        result = {"sizes_bytes": sizes, "build_s": builds, "start_s": starts, "median_s": med, "engines": str(args.engines)}
        if args.markdown:
            print(f"engine set {args.engines}; {args.runs} round(s); starts to the first answered request, median\n")
            rng = lambda k: f"{min(starts[k]):.2f}-{max(starts[k]):.2f}"  # noqa: E731
            print("| artifact | size | build | cold start (range) | warm start (range) | cold / reference | warm / reference |")
            print("|---|---|---|---|---|---|---|")
            for tool in ("pex", "shiv"):
                print(f"| {tool} | {sizes[tool] / 2**20:.1f} MiB | {builds[tool]:.1f} s | {med[tool + ' cold']:.2f} s ({rng(tool + ' cold')}) | "
                      f"{med[tool + ' warm']:.2f} s ({rng(tool + ' warm')}) | {med[tool + ' cold'] / med['reference']:.2f} | "
                      f"{med[tool + ' warm'] / med['reference']:.2f} |")
            print(f"| reference: `streetcascade serve` from the checkout's venv | - | - | - | {med['reference']:.2f} s ({rng('reference')}) | - | 1.00 |")
        else:
            print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
