"""`streetcascade ray-deploy`: put miner.toml's engine set on a Ray cluster as a Ray Serve
application ([engine] engine and cascade_config, [runtime], [ray]), so that `streetcascade serve`
with `[engine] ray_address` sends its work there. `build_app` does the same for Ray's own CLI:

    serve run streetcascade.miner.ray_deploy:build_app config=/path/to/miner.toml

The plan (each stage's replicas, resources and memory per replica against its budget) is checked
before Ray is touched; `--dry-run` stops there. See docs/ray.md.
"""

from __future__ import annotations

from pathlib import Path

from streetcascade.errors import ConfigError
from streetcascade.manifest import read_manifest
from streetcascade.runtime.ray_plan import ReplicaPlan, checked_plans, ray_module

from .config import MinerConfig, cascade_overrides, load_miner_config


def engine_dir(cfg: MinerConfig) -> str:
    if cfg.engine.engine == "fake":
        raise ConfigError("[engine] engine: ray-deploy needs an engine-set folder (e.g. engines/cpu-x86_64), not \"fake\"")
    return cfg.engine.engine


def plan(cfg: MinerConfig, where: str = "miner.toml") -> list[ReplicaPlan]:
    return checked_plans(read_manifest(engine_dir(cfg)), cfg.ray, cfg.runtime, where)


def deploy(cfg: MinerConfig, address: str, where: str = "miner.toml") -> dict:
    thresholds, rules = cascade_overrides(cfg)
    return ray_module("ray_app").deploy(engine_dir(cfg), cfg.ray, cfg.runtime, address, thresholds, rules, where)


def build_app(args: dict):
    """Ray Serve's application builder (`serve run MODULE:build_app config=miner.toml`)."""
    path = args.get("config")
    if not path:
        raise ConfigError("build_app needs config=PATH (a miner.toml with [engine] engine and [ray])")
    cfg = load_miner_config(Path(path))
    plans = plan(cfg, str(path))
    thresholds, rules = cascade_overrides(cfg)
    return ray_module("ray_app").build_application(engine_dir(cfg), plans, thresholds, rules)
