"""The operator's workflow: miner.env + network presets, model-card, natix-register, doctor,
all through the real CLI on a throw-away wallet, the fake engine or a fake-target engine set,
and local stand-ins for NATIX's server, an NTP server and the chain."""

from __future__ import annotations

import http.server
import json
import re
import socket
import struct
import sys
import threading
import time

import pytest
from bittensor_wallet import Keypair, Wallet
from streetcascade.compile import models
from streetcascade.compile.pipeline import compile_cascade
from streetcascade.miner import doctor as doctor_mod
from streetcascade.miner import natix
from streetcascade.miner.config import load_miner_config
from streetcascade.miner.model_card import check_card
from streetcascade.miner.presets import read_env_file
from support import write_config

from fake_bittensor import AxonInfo, FakeChain, install
from streetcascade.cli import main
from streetcascade.errors import BadInput, ConfigError

REFERENCE_ENV = """IMAGE_DETECTOR=ViT
IMAGE_DETECTOR_CONFIG=ViT_roadwork.yaml
IMAGE_DETECTOR_DEVICE=cpu # Options: cpu, cuda
NETUID=323                           # 323 for testnet, 72 for mainnet
SUBTENSOR_NETWORK=test               # Networks: finney, test, local
SUBTENSOR_CHAIN_ENDPOINT=wss://test.finney.opentensor.ai:443
WALLET_NAME=tw
WALLET_HOTKEY=th
MINER_AXON_PORT={port}
BLACKLIST_FORCE_VALIDATOR_PERMIT=True # Force validator permit for blacklisting
MODEL_URL=https://huggingface.co/someone/roadwork
PROXY_CLIENT_URL={url}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def op(tmp_path):
    """A throw-away wallet (//Bob) and a miner.toml serving it with the fake engine."""
    wallets = tmp_path / "wallets"
    Wallet(name="tw", hotkey="th", path=str(wallets)).set_hotkey(Keypair.create_from_uri("//Bob"), encrypt=False, overwrite=True)
    port = free_port()
    cfg = tmp_path / "miner.toml"
    cfg.write_text(f"""
host = "127.0.0.1"
[[hotkeys]]
port = {port}
wallet_name = "tw"
wallet_hotkey = "th"
wallet_path = "{wallets}"
[engine]
engine = "fake"
[chain]
metagraph = "static"
[[chain.static_neurons]]
hotkey = "{Keypair.create_from_uri('//Alice').ss58_address}"
stake = 5000.0
""")

    class Op:
        path = cfg
        dir = tmp_path
        hotkey = Keypair.create_from_uri("//Bob").ss58_address

    Op.port = port
    return Op


# -- miner.env and presets --

def test_reference_env_file_is_read_as_bash_would(tmp_path):
    env = tmp_path / "miner.env"
    env.write_text(REFERENCE_ENV.format(port=8091, url="https://hydra.natix.network") + 'export QUOTED="a # b"\nEMPTY=\n')
    values = read_env_file(env)
    assert values["NETUID"] == "323" and values["IMAGE_DETECTOR_DEVICE"] == "cpu"
    assert values["BLACKLIST_FORCE_VALIDATOR_PERMIT"] == "True" and values["QUOTED"] == "a # b" and values["EMPTY"] == ""


def test_env_file_over_config_then_network_preset(op, caplog):
    caplog.set_level("INFO")
    env = op.dir / "miner.env"
    env.write_text(REFERENCE_ENV.format(port=9999, url="https://example.invalid"))
    cfg = load_miner_config(op.path, env)
    assert (cfg.chain.netuid, cfg.chain.network, cfg.chain.chain_endpoint) == (323, "test", "wss://test.finney.opentensor.ai:443")
    assert cfg.hotkeys[0].port == 9999 and cfg.hotkeys[0].wallet_name == "tw"
    assert cfg.natix.model_repo == "https://huggingface.co/someone/roadwork" and cfg.natix.registration_url == "https://example.invalid"
    assert cfg.policy.force_validator_permit is True
    assert "IMAGE_DETECTOR" in caplog.text  # reported as ignored
    main_net = load_miner_config(op.path, env, network="finney")
    assert (main_net.chain.netuid, main_net.chain.network, main_net.chain.chain_endpoint) == (72, "finney", "")
    test_net = load_miner_config(op.path, None, network="test")
    assert (test_net.chain.netuid, test_net.chain.network) == (323, "test")


def test_env_file_alone_needs_an_engine(op):
    env = op.dir / "miner.env"
    env.write_text(REFERENCE_ENV.format(port=9999, url="https://x"))
    with pytest.raises(ConfigError, match="--engine"):
        load_miner_config(None, env)
    cfg = load_miner_config(None, env, engine="fake")
    assert cfg.engine.engine == "fake" and cfg.hotkeys[0].port == 9999


@pytest.mark.parametrize("line,match", [
    ("NETUID=seventy-two", "NETUID: expected an integer"),
    ("BLACKLIST_FORCE_VALIDATOR_PERMIT=maybe", "expected True or False"),
    ("MINER_AXON_PORT=70000", "port must be 1..65535"),
    ("this is not an assignment", "expected KEY=VALUE"),
])
def test_bad_env_values_are_config_errors(op, line, match):
    env = op.dir / "bad.env"
    env.write_text(line + "\n")
    with pytest.raises(ConfigError, match=match):
        load_miner_config(op.path, env)


def test_cli_refuses_unknown_network(op, capsys):
    with pytest.raises(SystemExit):
        main(["doctor", "--config", str(op.path), "--network", "mainnet"])


# -- model-card --

def test_model_card_write_and_validate(op, capsys):
    out = op.dir / "model_card.json"
    assert main(["model-card", "--config", str(op.path), "--out", str(out), "--name", "my-roadwork", "--version", "1.2.3"]) == 0
    card = json.loads(out.read_text())
    assert card["submitted_by"] == op.hotkey and card["version"] == "1.2.3" and card["model_name"] == "my-roadwork"
    assert abs(card["submission_time"] - time.time()) < 60 and isinstance(card["submission_time"], int)
    assert main(["model-card", "--config", str(op.path), "--validate", str(out)]) == 0
    assert "valid for hotkey" in capsys.readouterr().out
    card["submitted_by"] = Keypair.create_from_uri("//Eve").ss58_address
    card["version"] = "1.2"
    out.write_text(json.dumps(card))
    assert main(["model-card", "--config", str(op.path), "--validate", str(out)]) == 1
    text = capsys.readouterr().out
    assert "this miner's hotkey is" in text and "X.Y.Z" in text


@pytest.mark.parametrize("change,problem", [
    ({"submission_time": "2025-07-01T10:00:00Z"}, None),
    ({"submission_time": 1751364000000}, None),  # milliseconds
    ({"submission_time": "1751364000"}, None),
    ({"submission_time": 4102444800}, "in the future"),
    ({"submission_time": "yesterday"}, "Unix time"),
    ({"model_name": ""}, "non-empty"),
    ({"version": 1}, "X.Y.Z"),
    ({"extra": 1}, "unknown keys"),
])
def test_model_card_rules(change, problem):
    card = {"model_name": "m", "description": "d", "version": "0.1.0", "submitted_by": "5Fx", "submission_time": 1751364000}
    card.update(change)
    problems = check_card(card, "5Fx")
    assert (problems == []) if problem is None else any(problem in p for p in problems), problems
    assert check_card([1, 2]) and any("missing key 'description'" in p for p in check_card({"model_name": "m"}))


def test_model_card_from_an_engine_set(tmp_path, op, monkeypatch, capsys):
    monkeypatch.setitem(models.FAMILIES.entries, "mean-pixel", "mean_pixel_family:FAMILY")
    cc = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "mean-pixel", "source": "random:none"}], tmp_path / "engines", target={"backend": "fake"})
    dest = compile_cascade(cc, progress=False)
    out = tmp_path / "card.json"
    assert main(["model-card", "--config", str(op.path), "--engine", str(dest), "--out", str(out)]) == 0
    card = json.loads(out.read_text())
    assert card["model_name"] == "streetcascade-mean-pixel-random-none"
    assert "stage1: mean-pixel" in card["description"] and "fp32" in card["description"]


# -- natix-register --

class FakeNatix(http.server.BaseHTTPRequestHandler):
    posts: list = []
    statuses: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        FakeNatix.posts.append((self.path, self.headers["content-type"], json.loads(body)))
        self._send(200, {"detail": "Registration enqueued and will be processed shortly."})

    def do_GET(self):
        status = FakeNatix.statuses.pop(0) if FakeNatix.statuses else {"status": "pending"}
        self._send(200 if status else 500, status or {"detail": "boom"})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def natix_server():
    FakeNatix.posts, FakeNatix.statuses = [], []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeNatix)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_natix_register_dry_run_signature_verifies(op, capsys):
    assert main(["natix-register", "--config", str(op.path), "--uid", "12", "--model-repo", "someone/roadwork", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("POST https://hydra.natix.network/participants/register\nContent-Type: application/json")
    body = json.loads(out[out.index("{"): out.rindex("}") + 1])
    assert set(body) == {"uid", "message", "natix_public_key", "natix_signature", "type", "model_repo"}
    assert all(isinstance(v, str) for v in body.values())  # register.sh builds every value with jq --arg
    assert body["uid"] == "12" and body["type"] == "miner" and body["natix_public_key"] == op.hotkey
    assert abs(int(body["message"]) - time.time()) < 60
    assert not body["natix_signature"].startswith("0x")
    public = Keypair(ss58_address=body["natix_public_key"])
    assert public.verify(body["message"].encode(), bytes.fromhex(body["natix_signature"]))
    assert not public.verify(str(int(body["message"]) + 1).encode(), bytes.fromhex(body["natix_signature"]))


def test_natix_register_posts_and_polls(op, natix_server, capsys, monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    FakeNatix.statuses = [{"status": "pending"}, {"status": "processing"}, {"status": "succeeded"}]
    assert main(["natix-register", "--config", str(op.path), "--uid", "3", "--model-repo", "https://huggingface.co/someone/roadwork/tree/main",
                 "--url", natix_server]) == 0
    path, ctype, body = FakeNatix.posts[0]
    assert path == "/participants/register" and ctype == "application/json"
    assert body["model_repo"] == "someone/roadwork" and body["uid"] == "3"
    out = capsys.readouterr().out
    assert "Registration enqueued" in out and "registration status: succeeded" in out


def test_natix_register_failures_are_clear(op, natix_server, capsys, monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    FakeNatix.statuses = [{"status": "failed", "error_message": "model card missing"}]
    assert main(["natix-register", "--config", str(op.path), "--uid", "3", "--model-repo", "a/b", "--url", natix_server]) == natix.RegistrationError.exit_code
    assert "model card missing" in capsys.readouterr().err
    assert main(["natix-register", "--config", str(op.path), "--uid", "3", "--model-repo", "a/b", "--url", f"http://127.0.0.1:{free_port()}"]) == 15
    assert "cannot reach" in capsys.readouterr().err
    assert main(["natix-register", "--config", str(op.path), "--uid", "3", "--model-repo", "not a repo", "--dry-run"]) == BadInput.exit_code


def test_natix_register_finds_the_uid_on_chain(op, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["streetcascade"])
    install(monkeypatch, FakeChain(hotkeys=["x", "y", op.hotkey], stakes=[1.0] * 3, permits=[False] * 3))
    assert main(["natix-register", "--config", str(op.path), "--model-repo", "a/b", "--dry-run"]) == 0
    assert '"uid": "2"' in capsys.readouterr().out


# -- doctor --

class FakeNtp:
    """Answers SNTP with its clock `offset_s` ahead of ours."""

    def __init__(self, offset_s: float):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.offset_s = offset_s
        threading.Thread(target=self.run, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def run(self):
        while True:
            try:
                _, addr = self.sock.recvfrom(512)
            except OSError:
                return
            t = time.time() + self.offset_s + doctor_mod.NTP_EPOCH_OFFSET
            ts = struct.pack("!II", int(t), int((t % 1) * 2**32))
            self.sock.sendto(b"\x1c" + 31 * b"\0" + ts + ts, addr)


def doctor(op, *extra) -> tuple[int, str]:
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["doctor", "--config", str(op.path), *extra])
    return rc, buf.getvalue()


def line(out: str, name: str) -> str:
    return next(x for x in out.splitlines() if f"] {name}" in x)


def test_doctor_fresh_checkout_fake_engine(op):
    ntp = FakeNtp(0.0)
    rc, out = doctor(op, "--ntp-server", ntp.address)
    assert rc == 1  # the fake engine is not a detector
    assert line(out, "engine set").startswith("[fail]") and "fix: compile an engine set" in out
    assert line(out, f"hotkey :{op.port}").startswith("[ ok ]") and op.hotkey in out
    assert line(out, f"port :{op.port}").startswith("[ ok ]")
    assert line(out, "clock").startswith("[ ok ]")
    assert line(out, "chain").startswith("[skip]")


def test_doctor_clock_skew(op):
    rc, out = doctor(op, "--ntp-server", FakeNtp(10.0).address)
    assert line(out, "clock").startswith("[fail]")
    # The fake server stamps its reply once, so the measured offset is off by up to half the
    # round trip (milliseconds on a loaded 2-core box): compare within a tolerance.
    measured_ms = float(re.search(r"([+-]\d+) ms against", line(out, "clock")).group(1))
    assert abs(measured_ms + 10000) < 200, line(out, "clock")
    rc, out = doctor(op, "--ntp-server", FakeNtp(-1.0).address)
    assert line(out, "clock").startswith("[warn]")
    rc, out = doctor(op, "--ntp-server", f"127.0.0.1:{free_port()}", "--timeout", "0.3")
    assert line(out, "clock").startswith("[warn]") and "could not ask" in out


def test_doctor_sees_its_own_running_miner_and_foreign_programs(op, server_factory, keys):
    srv = server_factory(hotkeys=("miner",))  # //Bob, the op wallet's hotkey
    cfg_text = op.path.read_text().replace(f"port = {op.port}", f"port = {srv.ports[0]}\nexternal_ip = \"127.0.0.1\"")
    op.path.write_text(cfg_text)
    op.port = srv.ports[0]
    rc, out = doctor(op, "--ntp-server", "")
    assert "in use by this miner" in line(out, f"port :{op.port}")
    assert line(out, f"reachable :{op.port}").startswith("[ ok ]")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        op.path.write_text(cfg_text.replace(f"port = {srv.ports[0]}", f"port = {port}"))
        rc, out = doctor(op, "--ntp-server", "", "--timeout", "0.5")
        assert line(out, f"port :{port}").startswith("[fail]") and "another program" in out


def test_doctor_engine_set_budget_and_placeholder(op, tmp_path, monkeypatch):
    monkeypatch.setitem(models.FAMILIES.entries, "mean-pixel", "mean_pixel_family:FAMILY")
    cc = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "mean-pixel", "source": "random:none"}], tmp_path / "engines", target={"backend": "fake"})
    dest = compile_cascade(cc, progress=False)
    rc, out = doctor(op, "--engine", str(dest), "--ntp-server", "")
    assert line(out, "engine set").startswith("[ ok ]") and line(out, "memory budget").startswith("[ ok ]")
    assert line(out, "weights").startswith("[fail]") and "placeholder" in out
    op.path.write_text(op.path.read_text() + "\n[runtime]\nbudget_bytes = 1\n")
    rc, out = doctor(op, "--engine", str(dest), "--ntp-server", "")
    assert line(out, "memory budget").startswith("[fail]") and "budget_bytes" in out


def test_doctor_chain_checks(op, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["streetcascade"])
    chain = install(monkeypatch, FakeChain(hotkeys=["v", op.hotkey], stakes=[9e4, 1.0], permits=[True, False]))
    op.path.write_text(op.path.read_text().replace('metagraph = "static"', 'metagraph = "chain"'))
    rc, out = doctor(op, "--ntp-server", "")
    assert line(out, "chain").startswith("[ ok ]") and "2 neurons, 1 with a validator permit" in out
    assert "uid 1" in line(out, f"registered :{op.port}")
    assert line(out, f"axon on chain :{op.port}").startswith("[fail]") and "streetcascade register" in out
    chain.axons[op.hotkey] = AxonInfo("127.0.0.1", op.port)
    rc, out = doctor(op, "--ntp-server", "")
    assert line(out, f"axon on chain :{op.port}").startswith("[ ok ]")
    assert line(out, f"reachable :{op.port}").startswith("[ ok ]")  # the announced IP:port, listened on by doctor
    chain.hotkeys = ["v"]
    chain.stakes, chain.permits = [9e4], [True]
    rc, out = doctor(op, "--ntp-server", "")
    assert line(out, f"registered :{op.port}").startswith("[fail]") and "btcli subnet register --netuid 72" in out
