"""`streetcascade serve` as operators run it: config file, hotkey file, SIGTERM finishes in-flight work."""

import argparse
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
from bittensor_wallet import Wallet
from streetcascade.miner.cli import add_subcommands

from bench.dendrite_client import signed_headers, synapse_body


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path, keys, latency_ms):
    wallet = Wallet(name="w", hotkey="h", path=str(tmp_path / "wallets"))
    wallet.set_hotkey(keys["miner"], encrypt=False, overwrite=True)
    port, mport = free_port(), free_port()
    cfg = tmp_path / "miner.toml"
    cfg.write_text(f"""
host = "127.0.0.1"
metrics_port = {mport}
[[hotkeys]]
port = {port}
wallet_name = "w"
wallet_hotkey = "h"
wallet_path = "{tmp_path / 'wallets'}"
[engine]
engine = "fake"
fake_latency_ms = {latency_ms}
[runtime]
safety_margin_ms = 0
[chain]
metagraph = "static"
[[chain.static_neurons]]
hotkey = "{keys['validator'].ss58_address}"
stake = 5000.0
""")
    return cfg, port, mport


def wait_up(port, proc, timeout=30):
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not come up")


def test_serve_answers_and_sigterm_finishes_in_flight(tmp_path, keys, image_b64):
    cfg, port, mport = write_config(tmp_path, keys, latency_ms=1500)
    proc = subprocess.Popen([sys.executable, "-m", "streetcascade.miner.cli", "serve", "--config", str(cfg), "--log-json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_up(port, proc)
        assert httpx.get(f"http://127.0.0.1:{mport}/health").json()["status"] == "ok"
        result = {}

        def slow_request():
            h = signed_headers(keys["validator"], keys["miner"].ss58_address)
            body = synapse_body(image_b64, "ImageSynapse", 12.0, {}, {})
            result["resp"] = httpx.post(f"http://127.0.0.1:{port}/ImageSynapse", content=body, headers=h, timeout=20)

        t = threading.Thread(target=slow_request)
        t.start()
        time.sleep(0.5)  # the request is inside the 1.5 s model
        proc.send_signal(signal.SIGTERM)
        t.join(20)
        resp = result["resp"]
        assert resp.status_code == 200 and 0.0 <= resp.json()["prediction"] <= 1.0
        assert proc.wait(20) == 0
        err = proc.stderr.read().decode()
        assert '"level": "INFO"' in err and "shutting down" in err
        assert "privateKey" not in err and "secret" not in err.lower()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_bad_config_exit_code(tmp_path):
    bad = tmp_path / "miner.toml"
    bad.write_text("[[hotkeys]]\nport = 8091\nwallet_name = 'x'\nwallet_hotkey = 'y'\nnope = 1\n")
    out = subprocess.run([sys.executable, "-m", "streetcascade.miner.cli", "serve", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2 and "nope" in out.stderr


def test_serve_missing_wallet_exit_code(tmp_path):
    cfg = tmp_path / "miner.toml"
    cfg.write_text(f"[[hotkeys]]\nport = 8091\nhotkey_file = '{tmp_path / 'missing'}'\n[chain]\nmetagraph = 'static'\n[[chain.static_neurons]]\nhotkey = 'x'\n")
    out = subprocess.run([sys.executable, "-m", "streetcascade.miner.cli", "serve", "--config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 13 and "does not exist" in out.stderr


def test_register_dry_run(tmp_path, capsys):
    cfg = tmp_path / "miner.toml"
    cfg.write_text("[[hotkeys]]\nport = 8091\nwallet_name = 'm'\nwallet_hotkey = 'h'\nexternal_ip = '203.0.113.7'\n[chain]\nnetuid = 323\nnetwork = 'test'\n")
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["register", "--config", str(cfg), "--dry-run"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "netuid=323" in out and "203.0.113.7:8091" in out and "m/h" in out
