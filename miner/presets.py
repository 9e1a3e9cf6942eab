"""Network presets and the reference miner's `miner.env`, applied on top of miner.toml.

An operator coming from the subnet's reference miner keeps their miner.env: `--env-file
miner.env` reads its variable names (NETUID, SUBTENSOR_NETWORK, WALLET_NAME, MINER_AXON_PORT
...), and `--network test` switches netuid and network together. Precedence, lowest first:
miner.toml, then the env file, then `--network` / `--engine` on the command line.

Everything is applied to the raw TOML dict before it is validated, so a bad value is the same
ConfigError (naming the field) as a bad value in miner.toml.
"""

from __future__ import annotations

import re
from pathlib import Path

from streetcascade.errors import ConfigError

# netuid per network (docs/Mining.md of streetvision-subnet: 72 on finney, 323 on test).
NETWORKS: dict[str, dict] = {
    "finney": {"netuid": 72, "network": "finney"},
    "test": {"netuid": 323, "network": "test"},
}

# miner.env name -> (table, key, type). Names as the reference miner's setup_env.sh writes them.
ENV_KEYS: dict[str, tuple[str, str, type]] = {
    "NETUID": ("chain", "netuid", int),
    "SUBTENSOR_NETWORK": ("chain", "network", str),
    "SUBTENSOR_CHAIN_ENDPOINT": ("chain", "chain_endpoint", str),
    "BLACKLIST_FORCE_VALIDATOR_PERMIT": ("policy", "force_validator_permit", bool),
    "MODEL_URL": ("natix", "model_repo", str),
    "PROXY_CLIENT_URL": ("natix", "registration_url", str),
    # Ours (not in the reference file): which engine set to serve.
    "STREETCASCADE_ENGINE": ("engine", "engine", str),
}
# These go to the first [[hotkeys]] entry (the reference miner serves one hotkey).
HOTKEY_ENV_KEYS: dict[str, tuple[str, type]] = {
    "WALLET_NAME": ("wallet_name", str),
    "WALLET_HOTKEY": ("wallet_hotkey", str),
    "MINER_AXON_PORT": ("port", int),
}
# The reference miner's model selection: our cascade comes from [engine] instead.
REFERENCE_ONLY = frozenset({
    "IMAGE_DETECTOR", "IMAGE_DETECTOR_CONFIG", "IMAGE_DETECTOR_DEVICE",
    "VIDEO_DETECTOR", "VIDEO_DETECTOR_CONFIG", "VIDEO_DETECTOR_DEVICE",
})

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_env_file(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines as bash's `set -a; source miner.env` reads the reference file: comments
    on their own line or after a space, optional quotes and `export`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ConfigError(f"{path}:{n}: expected KEY=VALUE, got {line.strip()[:80]!r}")
        key, value = m.groups()
        if value[:1] in ("'", '"'):
            end = value.find(value[0], 1)
            if end < 0:
                raise ConfigError(f"{path}:{n}: unterminated quote in {key}")
            value = value[1:end]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        out[key] = value
    return out


def _convert(value: str, type_: type, where: str):
    if type_ is bool:
        low = value.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected True or False, got {value!r}")
    if type_ is int:
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    return value


def apply_env(raw: dict, env: dict[str, str], source: str) -> list[str]:
    """Set miner.toml fields from env-file values (empty values are unset, as in the reference
    template). Returns the names that were not used, for a log line."""
    unused = []
    for key, value in env.items():
        if value == "":
            continue
        where = f"{source}: {key}"
        if key in ENV_KEYS:
            table, field, type_ = ENV_KEYS[key]
            raw.setdefault(table, {})[field] = _convert(value, type_, where)
        elif key in HOTKEY_ENV_KEYS:
            field, type_ = HOTKEY_ENV_KEYS[key]
            hotkeys = raw.setdefault("hotkeys", [])
            if not hotkeys:
                hotkeys.append({})
            first = hotkeys[0]
            if field.startswith("wallet_"):
                first.pop("hotkey_file", None)  # the wallet named in the env file wins
            first[field] = _convert(value, type_, where)
        else:
            unused.append(key)
    return unused


def apply_network(raw: dict, name: str) -> None:
    """`--network finney|test`: netuid and network together; the endpoint goes back to that
    network's default (an endpoint for the other network would be wrong)."""
    if name not in NETWORKS:
        raise ConfigError(f"--network {name!r}: choose one of {sorted(NETWORKS)}")
    chain = raw.setdefault("chain", {})
    chain.update(NETWORKS[name])
    chain["chain_endpoint"] = ""
