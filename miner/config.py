"""miner.toml: what to serve (hotkeys and ports), which cascade, and the admission policy.

Every table is a frozen msgspec Struct with `forbid_unknown_fields=True`, so a typo in the
file is an error naming the field path. See configs/miner.example.toml and docs/miner.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from streetcascade.errors import ConfigError
from streetcascade.runtime.images import SAFE_IMAGE_FORMATS
from streetcascade.runtime.ray_plan import RayConfig

log = logging.getLogger(__name__)
from streetcascade.settings import RuntimeConfig
from streetcascade.structs import decode_struct, read_toml


class HotkeyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One miner identity: a hotkey served on its own port.

    Either a bittensor wallet (`wallet_name` + `wallet_hotkey` under `wallet_path`, like the
    reference miner's WALLET_NAME / WALLET_HOTKEY) or `hotkey_file`, a path to the hotkey's
    keyfile (the JSON file bittensor writes under wallets/<name>/hotkeys/<hotkey>).
    """

    port: int
    wallet_name: str = ""
    wallet_hotkey: str = ""
    wallet_path: str = "~/.bittensor/wallets"
    hotkey_file: str = ""
    # Public IP/port announced on chain by `streetcascade register` ("" = detect / same port).
    external_ip: str = ""
    external_port: int = 0


class EngineConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # An engine-set directory (e.g. "engines/cpu-x86_64", relative to the config file) or "fake"
    # (an instant deterministic model for benchmarks and tests; never for mining).
    engine: str = "fake"
    fake_latency_ms: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    # Optional cascade config (TOML) whose per-stage exit thresholds and temperatures (e.g.
    # written by `streetcascade tune`) replace the engine set's compile-time values. Only its
    # thresholds are used: run-time settings come from this file's [runtime] table.
    cascade_config: str = ""
    # "" = run the engine set in this process. Otherwise the Ray cluster that serves it as a Ray
    # Serve application (`streetcascade ray-deploy`, the [ray] table): "auto" (this machine is a
    # Ray node), "HOST:6379" (the head's GCS) or "ray://HOST:10001" (Ray Client). docs/ray.md.
    ray_address: str = ""


# Keys that moved from [engine] to [runtime] (a RuntimeConfig, shared with the cascade config).
MOVED_TO_RUNTIME = {"budget_bytes": "budget_bytes", "safety_margin_ms": "safety_margin_ms", "spin_wait": "spin_wait", "inference_threads": "slots"}


class ChainConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    netuid: int = 72  # 72 mainnet, 323 testnet
    network: str = "finney"  # SUBTENSOR_NETWORK: finney, test, local
    chain_endpoint: str = ""  # SUBTENSOR_CHAIN_ENDPOINT; "" = the network's default
    # "chain" reads hotkeys/stakes/permits through the bittensor SDK; "static" uses
    # `static_neurons` (tests, offline benchmarks, private deployments).
    metagraph: Literal["chain", "static"] = "chain"
    refresh_s: float = 300.0
    # Last good metagraph is written here and read at start if the chain is unreachable ("" = off).
    snapshot_path: str = ""
    static_neurons: list["StaticNeuron"] = []


class StaticNeuron(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hotkey: str
    stake: float = 0.0
    validator_permit: bool = True
    uid: int = -1


class PolicyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # BLACKLIST_FORCE_VALIDATOR_PERMIT in the reference miner.
    force_validator_permit: bool = True
    allow_non_registered: bool = False
    # metagraph.S (stake weight: alpha + 0.18 x root TAO) below which a caller is refused. The
    # reference miner has no such check (permit only). Subnet 72's validators held 442 to
    # 657,192 alpha in July 2026 (a third-party snapshot of taostats: eight validators, seven
    # above 10,000); 100 stays below every one of them and still refuses permit holders with
    # almost nothing at stake. Raise it if you see spam from low-stake permit holders.
    min_stake: float = 100.0
    # Token bucket per caller hotkey (validators send about one challenge per minute).
    rate_per_s: Annotated[float, msgspec.Meta(gt=0.0)] = 2.0
    rate_burst: Annotated[int, msgspec.Meta(ge=1)] = 20
    # Requests waiting for an inference thread; beyond this the lowest stake is refused (503).
    max_queue: Annotated[int, msgspec.Meta(ge=1)] = 64


class LimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Whole request body (base64 inflates the image by 4/3).
    max_body_bytes: int = 4 * 1024 * 1024
    max_image_bytes: int = 3 * 1024 * 1024
    # Decoded pixels (validators send 224 x 224; 4096 x 4096 is generous).
    max_pixels: int = 4096 * 4096
    # Used when a request has no (or an unparsable) `timeout` header, seconds.
    default_timeout_s: float = 12.0
    # Never plan longer than this, whatever the caller's timeout, seconds.
    max_timeout_s: float = 30.0
    cache_entries: int = 4096
    # Image formats opened at all (PIL format names). Validators send JPEG (natix/protocol.py
    # saves every challenge with format="JPEG"); PNG and WebP are cheap, safe extras. Never
    # add EPS/PostScript: PIL hands those to Ghostscript.
    image_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")

    def __post_init__(self):
        bad = [f for f in self.image_formats if f not in SAFE_IMAGE_FORMATS]
        if bad or not self.image_formats:
            raise ValueError(f"image_formats: {bad or 'empty'} not allowed; choose from {sorted(SAFE_IMAGE_FORMATS)}")


class EdgeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits at the HTTP edge, enforced per connection before a request reaches authentication
    (miner/edge.py). The defaults leave a validator's request (a ~2 KB head, a ~60 KB body sent
    at once, one per minute) far inside every limit."""

    # Bytes of a request head (request line + headers); bittensor's are ~1.5 KB. Over it: 431.
    max_head_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 20)] = 16 * 1024
    # A connection with no request in progress (from accept, or after a response) is closed.
    idle_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 20.0
    # From the first byte of a request to the end of its head; then to the end of its body: 408.
    head_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 10.0
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 20.0
    # Open connections per client IP (a validator needs a few); more are closed at accept.
    max_connections_per_ip: Annotated[int, msgspec.Meta(ge=1)] = 32
    # Open connections in all (0 = the open-files limit minus a reserve for everything else).
    max_connections: Annotated[int, msgspec.Meta(ge=0)] = 0
    # The soft open-files limit is raised to this at start (never above the hard limit); 0 = leave it.
    nofile: Annotated[int, msgspec.Meta(ge=0)] = 65536


class NatixConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The subnet's own bookkeeping (docs/Mining.md of streetvision-subnet): a Hugging Face repo
    holding model_card.json, registered with NATIX's application server."""

    # MODEL_URL in the reference miner.env: "user/model" (a huggingface.co URL is accepted).
    model_repo: str = ""
    # PROXY_CLIENT_URL; `natix-register` POSTs to <this>/participants/register.
    registration_url: str = "https://hydra.natix.network"
    # model_card.json fields (empty = derived from the engine set's manifest).
    model_name: str = ""
    description: str = ""
    model_version: str = "1.0.0"


class MinerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hotkeys: list[HotkeyConfig]
    # Memory budget, safety margin, inference slots (threads), ONNX Runtime threads/spinning.
    runtime: RuntimeConfig = RuntimeConfig()
    host: str = "0.0.0.0"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100  # 0 = no metrics/health server
    log_level: str = "INFO"
    log_json: bool = False
    # Also write the log here, rotated (relative to this file; "" = stderr only). The one-file
    # artifact writes <state dir>/logs/miner.log unless this is set.
    log_file: str = ""
    graceful_shutdown_s: float = 15.0
    engine: EngineConfig = EngineConfig()
    chain: ChainConfig = ChainConfig()
    policy: PolicyConfig = PolicyConfig()
    limits: LimitsConfig = LimitsConfig()
    edge: EdgeConfig = EdgeConfig()
    natix: NatixConfig = NatixConfig()
    # The Ray Serve application (per-stage replicas, CPU/GPU shares, batching); used when
    # [engine] ray_address is set and by `streetcascade ray-deploy`.
    ray: RayConfig = RayConfig()

    def __post_init__(self):
        if not self.hotkeys:
            raise ValueError("at least one [[hotkeys]] entry is needed")
        ports = [h.port for h in self.hotkeys]
        if len(set(ports)) != len(ports):
            raise ValueError(f"hotkeys: ports must differ, got {ports}")
        for i, h in enumerate(self.hotkeys):
            if not 0 < h.port < 65536:
                raise ValueError(f"hotkeys[{i}].port must be 1..65535, got {h.port}")
            if bool(h.hotkey_file) == bool(h.wallet_name or h.wallet_hotkey):
                raise ValueError(f"hotkeys[{i}]: set either hotkey_file or wallet_name + wallet_hotkey")
            if not h.hotkey_file and not (h.wallet_name and h.wallet_hotkey):
                raise ValueError(f"hotkeys[{i}]: wallet_name and wallet_hotkey are both needed")
        if self.metrics_port and self.metrics_port in ports:
            raise ValueError(f"metrics_port {self.metrics_port} is also a hotkey port")
        if self.chain.metagraph == "static" and not self.chain.static_neurons:
            raise ValueError("chain.metagraph = 'static' needs [[chain.static_neurons]] entries")


def load_miner_config(path: str | Path | None, env_file: str | Path | None = None, network: str | None = None,
                      engine: str | None = None) -> MinerConfig:
    """Read miner.toml, then apply the reference miner's env file, a `--network` preset and an
    `--engine` override (miner/presets.py); relative paths are resolved against the config
    file's folder (the env file's, or the current one, without a config file)."""
    from .presets import REFERENCE_ONLY, apply_env, apply_network, read_env_file

    sources = []
    raw: dict = {}
    if path is not None:
        path = Path(path)
        raw = read_toml(path)
        sources.append(str(path))
    if env_file is not None:
        unused = apply_env(raw, read_env_file(env_file), str(env_file))
        ignored = sorted(set(unused) & REFERENCE_ONLY)
        if ignored:
            log.info("%s: %s ignored (the cascade comes from [engine] / --engine)", env_file, ", ".join(ignored))
        unknown = sorted(set(unused) - REFERENCE_ONLY)
        if unknown:
            log.warning("%s: unknown names ignored: %s", env_file, ", ".join(unknown))
        sources.append(str(env_file))
    if network:
        apply_network(raw, network)
    if engine:
        raw.setdefault("engine", {})["engine"] = engine
    if path is None and not raw.get("engine", {}).get("engine"):
        raise ConfigError("no engine set: pass --engine DIR, set STREETCASCADE_ENGINE in the env file, or use a miner.toml with [engine]")
    source = " + ".join(sources) or "command line"
    RayConfig.check_raw(raw.get("ray"), source)
    try:
        cfg = decode_struct(raw, MinerConfig, source)
    except ConfigError as exc:
        moved = [k for k in MOVED_TO_RUNTIME if f"unknown field `{k}` - at `$.engine`" in str(exc)]
        if moved:
            raise ConfigError(f"{exc}; [engine] {moved[0]} moved to [runtime] {MOVED_TO_RUNTIME[moved[0]]}") from None
        raise
    base = path.parent if path is not None else Path(env_file).parent if env_file is not None else Path.cwd()
    return resolve_paths(cfg, base)


def cascade_overrides(cfg: MinerConfig):
    """(thresholds, rules) of [engine] cascade_config: its exit thresholds, temperatures and
    combination rules, or (None, None) when none is named (serve, doctor, ray-deploy)."""
    if not cfg.engine.cascade_config:
        return None, None
    from streetcascade.config import load_config, stage_rules, stage_thresholds

    cascade_cfg = load_config(cfg.engine.cascade_config)
    return stage_thresholds(cascade_cfg), stage_rules(cascade_cfg)


def _resolve(base: Path, value: str) -> str:
    if not value:
        return value
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p))


def resolve_paths(cfg: MinerConfig, base: Path) -> MinerConfig:
    hotkeys = [
        msgspec.structs.replace(h, hotkey_file=_resolve(base, h.hotkey_file), wallet_path=os.path.expanduser(h.wallet_path))
        for h in cfg.hotkeys
    ]
    engine = cfg.engine
    if engine.engine != "fake":
        engine = msgspec.structs.replace(engine, engine=_resolve(base, engine.engine), cascade_config=_resolve(base, engine.cascade_config))
    chain = msgspec.structs.replace(cfg.chain, snapshot_path=_resolve(base, cfg.chain.snapshot_path))
    return msgspec.structs.replace(cfg, hotkeys=hotkeys, engine=engine, chain=chain, log_file=_resolve(base, cfg.log_file))
