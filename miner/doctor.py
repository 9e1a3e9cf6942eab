"""`streetcascade doctor --config miner.toml`: everything that must hold for validators to get
good answers from this miner, each check with a fix. Runs beside a serving miner (it notices
its own axon on the ports) or before the first start.

Checks: hotkeys load; the engine set loads on this machine within the budget; no placeholder
weights; each port free or served by this miner for that hotkey; the announced IP reaches the
port; the chain endpoint answers; each hotkey is registered on the netuid and its axon on chain
is ours; the clock agrees with NTP (validators' nonces are checked against our clock); the
open-files limit; the NATIX model repo is set.
"""

from __future__ import annotations

import errno
import http.client
import resource
import socket
import struct
import time
from dataclasses import dataclass

from streetcascade.errors import BudgetExceeded, EngineMismatch, StreetcascadeError

from .config import HotkeyConfig, MinerConfig

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _check_hotkeys(cfg: MinerConfig) -> tuple[list[Check], dict[int, str]]:
    from .keys import load_hotkey

    checks, ss58 = [], {}
    for h in cfg.hotkeys:
        name = f"hotkey :{h.port}"
        try:
            ss58[h.port] = load_hotkey(h).ss58_address
            checks.append(Check(name, OK, ss58[h.port]))
        except StreetcascadeError as exc:
            checks.append(Check(name, FAIL, str(exc), "check wallet_name / wallet_hotkey / wallet_path (or hotkey_file) and that this user can read the file"))
    return checks, ss58


def _check_ray_app(cfg: MinerConfig) -> list[Check]:
    """[engine] ray_address: the Ray Serve application answers and describes its stages."""
    from streetcascade.runtime.ray_plan import ray_module

    where = f"Ray Serve application {cfg.ray.app_name!r} at {cfg.engine.ray_address}"
    try:
        remote = ray_module("ray_stage").connect_cascade(cfg.engine.ray_address, cfg.ray, cfg.runtime)
    except StreetcascadeError as exc:
        return [Check("engine set", FAIL, str(exc), "start the cluster (`ray start --head`), deploy the application "
                      "(`streetcascade ray-deploy --config miner.toml`), or fix [engine] ray_address / [ray] app_name (docs/ray.md)")]
    with remote:
        info = remote.info
        checks = [Check("engine set", OK, f"{where}: stages {[s['name'] for s in info['stages']]}, engine set {info['engine_dir']} ({info['target']})")]
        if info.get("placeholder_stages"):
            checks.append(Check("weights", FAIL, f"stages {info['placeholder_stages']} were compiled from placeholder (random) weights",
                                "compile from a real checkpoint and redeploy (`streetcascade ray-deploy`)"))
        else:
            checks.append(Check("weights", OK, "every stage was compiled from real weights"))
        return checks


def _check_engine(cfg: MinerConfig) -> list[Check]:
    eng = cfg.engine
    if eng.ray_address:
        return _check_ray_app(cfg)
    if eng.engine == "fake":
        return [Check("engine set", FAIL, 'engine = "fake": answers come from a test model, not a roadwork detector',
                      "compile an engine set (`streetcascade compile --config configs/default.toml`) and set [engine] engine to its folder")]
    from .cli import load_miner_engine_set

    try:
        engine_set = load_miner_engine_set(cfg, warmup=False)
    except BudgetExceeded as exc:
        return [Check("memory budget", FAIL, str(exc), "raise [runtime] budget_bytes if the machine has the memory, lower [runtime] slots, or compile a smaller / quantized set")]
    except EngineMismatch as exc:
        return [Check("engine set", FAIL, str(exc), "recompile on this machine (or one like it): `streetcascade compile --config <cascade config>`")]
    except StreetcascadeError as exc:
        return [Check("engine set", FAIL, str(exc), "see the message; `streetcascade info --config <cascade config>` shows the engine set")]
    try:
        plan = engine_set.plan
        stages = [s.name for s in engine_set.manifest.stages]
        checks = [
            Check("engine set", OK, f"{eng.engine}: stages {stages}, loads on this machine ({engine_set.manifest.target.name})"),
            Check("memory budget", OK, f"{plan.total_bytes / 2**20:.0f} MiB of {plan.budget_bytes / 2**20:.0f} MiB for {plan.slots} slot(s)"),
        ]
        placeholder = engine_set.placeholder_stages
        if placeholder:
            checks.append(Check("weights", FAIL, f"stages {placeholder} were compiled from placeholder (random) weights",
                                "compile from a real checkpoint (the cascade config's `source` / --weights)"))
        else:
            checks.append(Check("weights", OK, "every stage was compiled from real weights"))
        return checks
    finally:
        engine_set.close()


def _probe_axon(port: int, timeout_s: float) -> str | None:
    """The hotkey a streetcascade axon on 127.0.0.1:port answers as (None: not ours / no answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", "/ImageSynapse", body=b"", headers={"connection": "close"})
        resp = conn.getresponse()
        resp.read(4096)
        return resp.getheader("bt_header_axon_hotkey")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _port_state(host: str, port: int) -> tuple[str, socket.socket | None]:
    """("free", listening socket) or ("in use", None)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(8)
        return "free", sock
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return "in use", None
        raise


def _check_ports(cfg: MinerConfig, ss58: dict[int, str], announced: dict[int, tuple[str, int]], timeout_s: float) -> list[Check]:
    checks = []
    for h in cfg.hotkeys:
        try:
            state, listener = _port_state(cfg.host, h.port)
        except OSError as exc:
            checks.append(Check(f"port :{h.port}", FAIL, f"cannot listen on {cfg.host}:{h.port}: {exc}", "choose another port or host"))
            continue
        try:
            if state == "free":
                checks.append(Check(f"port :{h.port}", OK, f"{cfg.host}:{h.port} is free"))
            else:
                served_as = _probe_axon(h.port, timeout_s)
                if served_as and served_as == ss58.get(h.port):
                    checks.append(Check(f"port :{h.port}", OK, f"in use by this miner (answers as {served_as})"))
                else:
                    who = f"an axon of hotkey {served_as}" if served_as else "another program"
                    checks.append(Check(f"port :{h.port}", FAIL, f"{cfg.host}:{h.port} is in use by {who}",
                                        f"stop it (`ss -ltnp 'sport = :{h.port}'` shows which) or pick another port"))
                    continue
            checks.append(_check_reachable(h, announced.get(h.port), timeout_s))
        finally:
            if listener is not None:
                listener.close()
    return checks


def _check_reachable(h: HotkeyConfig, announced: tuple[str, int] | None, timeout_s: float) -> Check:
    name = f"reachable :{h.port}"
    if announced is None or announced[0] in ("", "0.0.0.0"):
        return Check(name, SKIP, "no external_ip configured and none announced on chain",
                     "set external_ip in [[hotkeys]] (or run `streetcascade register`, which detects it)")
    ip, port = announced
    try:
        socket.create_connection((ip, port), timeout=timeout_s).close()
        return Check(name, OK, f"{ip}:{port} accepts connections from this machine")
    except OSError as exc:
        return Check(name, WARN, f"{ip}:{port} did not accept a connection from this machine ({exc})",
                     "open the port in the firewall / forward it on the router; from outside check with `nc -vz IP PORT` "
                     "(some NATs cannot reach their own public IP from inside, so this may be a false alarm)")


def _check_chain(cfg: MinerConfig, ss58: dict[int, str]) -> tuple[list[Check], dict[int, tuple[str, int]]]:
    chain = cfg.chain
    announced = {h.port: (h.external_ip, h.external_port or h.port) for h in cfg.hotkeys if h.external_ip}
    if chain.metagraph == "static":
        return [Check("chain", SKIP, "chain.metagraph = \"static\": the chain is not used")], announced
    from .chain import ChainMetagraph, neuron_on_chain

    where = chain.chain_endpoint or chain.network
    t0 = time.perf_counter()
    try:
        snap = ChainMetagraph(chain.netuid, chain.network, chain.chain_endpoint).fetch()
    except Exception as exc:  # SDK missing, endpoint down, odd answers: all one message
        return [Check("chain", FAIL, f"{where}: {type(exc).__name__}: {str(exc)[:300]}",
                      "install the chain extra (pip install 'streetcascade[chain]') and check [chain] network / chain_endpoint")], announced
    validators = sum(1 for n in snap.neurons if n.validator_permit)
    checks = [Check("chain", OK, f"{where}: netuid {chain.netuid} at block {snap.block}, {len(snap.neurons)} neurons, "
                                 f"{validators} with a validator permit ({(time.perf_counter() - t0) * 1000:.0f} ms)")]
    for h in cfg.hotkeys:
        hk = ss58.get(h.port)
        if hk is None:
            continue
        try:
            neuron = neuron_on_chain(hk, chain.netuid, chain.network, chain.chain_endpoint)
        except Exception as exc:
            checks.append(Check(f"registered :{h.port}", FAIL, f"{type(exc).__name__}: {str(exc)[:200]}", "retry; check the endpoint"))
            continue
        if neuron is None:
            checks.append(Check(f"registered :{h.port}", FAIL, f"{hk} is not registered on netuid {chain.netuid}",
                                f"btcli subnet register --netuid {chain.netuid} --subtensor.network {chain.network} --wallet.name ... --wallet.hotkey ..."))
            continue
        checks.append(Check(f"registered :{h.port}", OK, f"uid {neuron.uid}"))
        want_port = h.external_port or h.port
        on_chain = (neuron.axon_ip, neuron.axon_port)
        if neuron.axon_ip in ("", "0.0.0.0"):
            checks.append(Check(f"axon on chain :{h.port}", FAIL, "no axon served for this hotkey", "streetcascade register --config miner.toml"))
        elif on_chain[1] != want_port or (h.external_ip and on_chain[0] != h.external_ip):
            checks.append(Check(f"axon on chain :{h.port}", FAIL, f"chain says {on_chain[0]}:{on_chain[1]}, we serve {h.external_ip or '<detected ip>'}:{want_port}",
                                "streetcascade register --config miner.toml"))
        else:
            checks.append(Check(f"axon on chain :{h.port}", OK, f"{on_chain[0]}:{on_chain[1]}"))
        announced.setdefault(h.port, on_chain)
    return checks, announced


def ntp_offset_s(server: str, port: int = 123, timeout_s: float = 2.0) -> float:
    """This clock minus the server's, in seconds (one SNTP v3 exchange, RFC 4330)."""
    addr = socket.getaddrinfo(server, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(addr[0], socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        t0 = time.time()
        sock.sendto(b"\x1b" + 47 * b"\0", addr[4])
        data, _ = sock.recvfrom(512)
        t3 = time.time()
    if len(data) < 48:
        raise OSError(f"short NTP answer ({len(data)} bytes)")
    rx_s, rx_f, tx_s, tx_f = struct.unpack("!IIII", data[32:48])
    t1 = rx_s - NTP_EPOCH_OFFSET + rx_f / 2**32
    t2 = tx_s - NTP_EPOCH_OFFSET + tx_f / 2**32
    return -(((t1 - t0) + (t2 - t3)) / 2)


def _check_clock(ntp_server: str, timeout_s: float) -> Check:
    if not ntp_server:
        return Check("clock", SKIP, "no NTP server given")
    host, _, port = ntp_server.partition(":")
    try:
        offset = ntp_offset_s(host, int(port or 123), timeout_s)
    except (OSError, ValueError) as exc:
        return Check("clock", WARN, f"could not ask {ntp_server}: {exc}", "check that the system clock is synchronised (`timedatectl status`)")
    fix = "enable time synchronisation: `timedatectl set-ntp true`, or install chrony"
    text = f"{offset * 1000:+.0f} ms against {ntp_server}"
    # Validators' nonces must be within 4 s (+ the request's timeout) of our clock.
    if abs(offset) <= 0.5:
        return Check("clock", OK, text)
    if abs(offset) <= 2.0:
        return Check("clock", WARN, text + " (nonce checks allow 4 s)", fix)
    return Check("clock", FAIL, text + ": validators' requests will be refused as stale or future", fix)


def _check_open_files(cfg: MinerConfig) -> Check:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cfg.edge.nofile
    reachable = target if hard == resource.RLIM_INFINITY else min(target, hard)
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    text = f"soft {soft}, hard {hard_text}; serve raises it to {max(soft, reachable)}"
    if max(soft, reachable) < 4096:
        return Check("open files", WARN, text + ": a few thousand idle connections would exhaust it",
                     "raise the hard limit: LimitNOFILE=65536 in the systemd unit, or `ulimit -Hn 65536` / limits.conf")
    return Check("open files", OK, text)


def _check_natix(cfg: MinerConfig) -> Check:
    if not cfg.natix.model_repo:
        return Check("natix model repo", WARN, "[natix] model_repo (MODEL_URL) is empty",
                     "publish model_card.json (`streetcascade model-card`) to a Hugging Face repo and set model_repo")
    return Check("natix model repo", OK, cfg.natix.model_repo)


def run_doctor(cfg: MinerConfig, ntp_server: str = "pool.ntp.org", timeout_s: float = 3.0) -> list[Check]:
    checks, ss58 = _check_hotkeys(cfg)
    checks += _check_engine(cfg)
    chain_checks, announced = _check_chain(cfg, ss58)
    checks += _check_ports(cfg, ss58, announced, timeout_s)
    checks += chain_checks
    checks.append(_check_clock(ntp_server, timeout_s))
    checks.append(_check_open_files(cfg))
    checks.append(_check_natix(cfg))
    return checks


def format_checks(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"[{c.status:^4}] {c.name}: {c.detail}")
        if c.fix and c.status in (WARN, FAIL, SKIP):
            lines.append(f"       fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    lines.append(f"{len(checks)} checks: {failed} failed, {warned} warnings")
    return "\n".join(lines)
