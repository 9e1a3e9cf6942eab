"""The cascade config (TOML): what to compile, for which target, and how to run it.

Example (configs/default.toml):

    [target]
    backend = "onnxruntime"
    device = "cpu"

    [[stages]]
    name = "stage1"
    family = "dinov3"
    source = "facebook/dinov3-vits16-pretrain-lvd1689m"   # or a local dir, or "random:vits16"
    head = "heads/roadwork-vits16.safetensors"
    exit_low = 0.15
    exit_high = 0.85
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from streetcascade.errors import ConfigError
from streetcascade.structs import load_toml

Precision = Literal["fp32", "fp16", "int8-dynamic", "int8-static"]


class TargetConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    backend: str = "onnxruntime"  # a runtime.backends registry name
    device: Literal["cpu", "cuda"] = "cpu"
    # Folder name under engines/; "" = derived from the machine (e.g. cpu-x86_64).
    name: str = ""
    # Threads for intra-op parallelism; 0 = one per physical core.
    intra_op_threads: int = 0


class StageConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    family: str  # a compile.models registry name: "dinov3", "hf-classifier"
    # A local checkpoint dir, a hub id, or "random:<preset>" (placeholder weights, never a detector).
    source: str
    input_size: int = 224
    precision: Precision = "fp32"
    exit_low: float = 0.15
    exit_high: float = 0.85
    temperature: float = 1.0
    # dinov3: safetensors file with the binary head (relative to the config file); "" = random head.
    head: str = ""
    # hf-classifier: which label means "roadwork" (name or index); "" = index 1 of 2, or the only logit.
    positive_label: str = ""
    # Largest batch the engine is prepared (and parity-checked) for.
    max_batch: int = 8
    # Parity gate: max abs error on probabilities vs. PyTorch; 0 = the precision's default
    # (fp32 1e-4, int8-dynamic 0.15).
    parity_tolerance: float = 0.0
    seed: int = 0


class RuntimeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    budget_bytes: int = 24 * 1024**3
    deadline_ms: float = 8000.0
    safety_margin_ms: float = 250.0


class CascadeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    stages: list[StageConfig]
    target: TargetConfig = TargetConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    # Where engine sets go: <engines_dir>/<target name>/ (relative to the config file).
    engines_dir: str = "engines"
    # Real-looking images for the parity gate (besides random ones), relative to the config file.
    parity_images: str = ""


def load_config(path: str | Path) -> CascadeConfig:
    config = load_toml(path, CascadeConfig)
    if not config.stages:
        raise ConfigError(f"{path}: `stages` is empty; a cascade needs at least one stage")
    names = [s.name for s in config.stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: stage names must be unique, got {names}")
    for i, stage in enumerate(config.stages):
        where = f"{path}: $.stages[{i}]"
        if not 0.0 <= stage.exit_low <= stage.exit_high <= 1.0:
            raise ConfigError(f"{where}: need 0 <= exit_low <= exit_high <= 1, got {stage.exit_low}, {stage.exit_high}")
        if stage.input_size < 32 or stage.input_size > 1024:
            raise ConfigError(f"{where}.input_size: {stage.input_size} is outside 32..1024")
        if stage.max_batch < 1:
            raise ConfigError(f"{where}.max_batch: must be >= 1")
        if stage.temperature <= 0:
            raise ConfigError(f"{where}.temperature: must be > 0")
    return config


def resolve_relative(config_path: str | Path, value: str) -> Path:
    """Paths in a config are relative to the config file, not the working directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(config_path).resolve().parent / p
