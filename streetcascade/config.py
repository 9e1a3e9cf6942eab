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


CalibrationMethod = Literal["minmax", "entropy", "percentile"]


class CalibrationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Labelled data for `precision = "int8-static"` (calibration + accuracy gate), and the
    gate's limits. Paths are relative to the config file.

        [calibration]
        data = "data/roadwork"           # roadwork/ + no_roadwork/ (optionally under real/, synthetic/)
        # or: parquet = ["data/natix-*.parquet"], image_column = "image", label_column = "label"
        method = "minmax"                # minmax | entropy | percentile
        max_flip_rate = 0.005
        max_mcc_drop = 0.01
    """

    # Image folder (roadwork/ + no_roadwork/ layout, or `labels_csv`), or parquet files (globs allowed).
    data: str = ""
    labels_csv: str = ""
    filename_column: str = "filename"
    parquet: list[str] = []
    image_column: str = "image"
    label_column: str = "label"
    source_column: str = ""
    # Content-hash split (calibration / validation / test fractions) and the challenge seed.
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.2, 0.4, 0.4)
    challenge_seed: int = 0
    # How many challenges (validator mix) to calibrate on / to gate on.
    calibration_samples: int = 128
    validation_samples: int = 512
    method: CalibrationMethod = "minmax"
    percentile: float = 99.999  # for method = "percentile"
    # Accuracy gate: quantized vs FP32 engine on the validation split; over a limit -> refused.
    max_flip_rate: float = 0.005
    max_mcc_drop: float = 0.01
    max_accuracy_drop: float = 0.01
    max_auc_drop: float = 0.01
    # Largest |p_int8 - p_fp32| on any validation image; 1.0 = not checked.
    max_prob_error: float = 1.0
    # Leave the N most harmful layers (by a per-layer sensitivity pass) in FP32. 2: what brought ViT-S/16
    # to the 0.5% flip limit (not under it) at ~no speed cost (docs/quantization.md); 0 = no pass.
    sensitivity_keep_fp32: int = 2
    # Images used by the sensitivity pass (a prefix of the validation challenges); 0 = all.
    sensitivity_samples: int = 64
    # Quantize the first patch-embedding Conv and the classification head too (default: FP32).
    quantize_patch_embed: bool = False
    quantize_head: bool = False

    def has_data(self) -> bool:
        return bool(self.data or self.parquet)


class RuntimeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    budget_bytes: int = 24 * 1024**3
    deadline_ms: float = 8000.0
    safety_margin_ms: float = 250.0
    # ONNX Runtime worker threads spin between ops: ~6-15% lower latency on an idle CPU, but
    # about 2x slower when other processes compete for the cores (docs/benchmarks.md). Set
    # false on a shared CPU (several miners, other services).
    spin_wait: bool = True


class CascadeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    stages: list[StageConfig]
    target: TargetConfig = TargetConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    # Where engine sets go: <engines_dir>/<target name>/ (relative to the config file).
    engines_dir: str = "engines"
    # Real-looking images for the parity gate (besides random ones), relative to the config file.
    parity_images: str = ""
    # Labelled data + gate limits for int8-static stages (see CalibrationConfig).
    calibration: CalibrationConfig | None = None


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
        if stage.precision == "int8-static" and (config.calibration is None or not config.calibration.has_data()):
            raise ConfigError(
                f"{where}.precision: int8-static needs labelled calibration data: add a [calibration] table with "
                "`data = \"FOLDER\"` (roadwork/ + no_roadwork/) or `parquet = [\"FILE.parquet\"]`"
            )
    if config.calibration is not None:
        _check_calibration(config.calibration, f"{path}: $.calibration")
    return config


def _check_calibration(cal: CalibrationConfig, where: str) -> None:
    if cal.data and cal.parquet:
        raise ConfigError(f"{where}: give either `data` (image folder) or `parquet`, not both")
    if cal.labels_csv and not cal.data:
        raise ConfigError(f"{where}.labels_csv: needs `data` (the folder the CSV's file names are relative to)")
    if len(cal.split_fractions) != 3 or any(f < 0 for f in cal.split_fractions) or abs(sum(cal.split_fractions) - 1.0) > 1e-6:
        raise ConfigError(f"{where}.split_fractions: need 3 non-negative fractions summing to 1, got {list(cal.split_fractions)}")
    if cal.calibration_samples < 1 or cal.validation_samples < 1:
        raise ConfigError(f"{where}: calibration_samples and validation_samples must be >= 1")
    for name in ("max_flip_rate", "max_mcc_drop", "max_accuracy_drop", "max_auc_drop", "max_prob_error"):
        value = getattr(cal, name)
        if not 0.0 <= value <= 2.0:
            raise ConfigError(f"{where}.{name}: {value} is outside 0..2")
    if not 90.0 <= cal.percentile <= 100.0:
        raise ConfigError(f"{where}.percentile: {cal.percentile} is outside 90..100")
    if cal.sensitivity_keep_fp32 < 0 or cal.sensitivity_samples < 0:
        raise ConfigError(f"{where}: sensitivity_keep_fp32 and sensitivity_samples must be >= 0")


def stage_overrides(config: CascadeConfig) -> dict[str, tuple[float, float, float]]:
    """(exit_low, exit_high, temperature) per stage name, as the config says now.

    `classify/eval/serve --config` apply these over the manifest's values, so a config
    rewritten by `streetcascade tune` takes effect without recompiling.
    """
    return {s.name: (s.exit_low, s.exit_high, s.temperature) for s in config.stages}


def resolve_relative(config_path: str | Path, value: str) -> Path:
    """Paths in a config are relative to the config file, not the working directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (Path(config_path).resolve().parent / p).resolve()
