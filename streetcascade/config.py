"""The cascade config (TOML): what to compile, for which target, and how to run it.

Example (configs/default.toml):

    [target]
    backend = "onnxruntime"
    device = "cpu"

    [runtime]                      # streetcascade.settings.RuntimeConfig
    budget_bytes = 25769803776

    [[stages]]
    name = "stage1"
    family = "dinov3"
    source = "facebook/dinov3-vits16-pretrain-lvd1689m"   # or a local dir, or "random:vits16"
    head = "heads/roadwork-vits16.safetensors"
    exit_low = 0.15
    exit_high = 0.85

Ranges are declared on the fields (msgspec.Meta): a bad value is a ConfigError naming its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from streetcascade.errors import ConfigError
from streetcascade.evidence import LogOddsRule, Vocabulary
from streetcascade.settings import Probability, RuntimeConfig, StageThresholds
from streetcascade.structs import load_toml
from streetcascade.vlm import JudgeSettings

# What a target can build is its own list (Target.precisions); bf16, fp8 and int4 are also planned
# (`streetcascade plan`) before a target builds them.
Precision = Literal["fp32", "fp16", "bf16", "fp8", "int8-dynamic", "int8-static", "int4"]
# Precisions whose engines pass the accuracy gate (flips, MCC, accuracy, AUC vs the FP32 engine
# on the validation split) before they are written: they need [calibration] data.
GATED_PRECISIONS = ("int8-static", "bf16")
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Limit = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]

_THRESHOLD_DEFAULTS = StageThresholds()


class TargetConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # A compile.targets / runtime.backends registry name, or "auto" (cpu): build the first
    # classifier stage with each CPU target installed, time them side by side, keep the fastest.
    backend: str = "onnxruntime"
    device: Literal["cpu", "cuda"] = "cpu"
    # Folder name under engines/; "" = derived from the machine (e.g. cpu-x86_64, sm89-rtx4090).
    name: str = ""
    # onnxruntime on cuda: which execution provider runs the graph ("tensorrt" keeps its engine
    # and timing caches next to the graph); ignored elsewhere.
    execution_provider: Literal["cuda", "tensorrt"] = "cuda"
    # TensorRT: builder workspace limit (0 = 4 GiB).
    workspace_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Timed batch-1 calls of each graph and of its reference (PyTorch eager on the exported
    # module, or the source ONNX graph), side by side; the ratio goes into the manifest for the
    # latency-regression suite (tests/latency/). 0 = not measured.
    latency_runs: Annotated[int, msgspec.Meta(ge=0, le=10000)] = 30
    # aoti: Inductor's max-autotune (GEMM and fused-kernel configurations timed on this GPU at
    # compile time; minutes longer to build). Ignored by other targets.
    autotune: bool = False


INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)


class Int4Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`precision = "int4"`: 4-bit weights, float activations (compile/int4.py; docs/quantization.md).
    From an AutoAWQ checkpoint (`source`), the checkpoint's own ints are imported (no
    re-quantization); otherwise every MatMul with a constant weight is rounded to nearest.

        [stages.int4]
        block_size = 128          # weights per scale along K: 16, 32, 64, 128 or 256 (smaller: closer to FP32, larger file)
        symmetric = true          # false: a zero point per block too
        accuracy_level = 4        # 4: the CPU kernel multiplies int8-quantized activations (faster); 0: float activations
        keep_float = ["*lm_head*"]  # ONNX node-name patterns left float
        awq_rest = "float"        # AutoAWQ source: MatMuls the checkpoint left float stay float, or "rtn"
        embeddings = "int4"       # token-embedding tables 4-bit too (onnxruntime target), or "float"
    """

    bits: Literal[4] = 4
    block_size: int = 128
    symmetric: bool = True
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    keep_float: list[str] = []
    awq_rest: Literal["float", "rtn"] = "float"
    # Token-embedding tables (Gathers over a constant table of >= 256 rows), which are not MatMuls:
    # "int4" rounds them to 4 bits per block like the MatMuls (ONNX Runtime target: GatherBlockQuantized;
    # a language model's largest weight), "float" keeps them.
    embeddings: Literal["float", "int4"] = "int4"

    def __post_init__(self):
        if self.block_size not in INT4_BLOCK_SIZES:
            raise ValueError(f"block_size {self.block_size}: use a power of two from 16 to 256 ({', '.join(map(str, INT4_BLOCK_SIZES))})")


class StageConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    family: str  # a compile.models registry name: "dinov3", "hf-classifier"
    # A local checkpoint dir, a hub id, or "random:<preset>" (placeholder weights, never a detector).
    source: str
    input_size: Annotated[int, msgspec.Meta(ge=32, le=1024)] = 224
    precision: Precision = "fp32"
    # The stage's StageThresholds, flat in the TOML table (see `thresholds`).
    exit_low: Probability = _THRESHOLD_DEFAULTS.exit_low
    exit_high: Probability = _THRESHOLD_DEFAULTS.exit_high
    temperature: Annotated[float, msgspec.Meta(gt=0.0, le=1000.0)] = _THRESHOLD_DEFAULTS.temperature
    # dinov3: safetensors file with the binary head (relative to the config file); "" = random head.
    head: str = ""
    # hf-classifier: which label means "roadwork" (name or index); "" = index 1 of 2, or the only logit.
    positive_label: str = ""
    # Largest batch the engine is prepared (and parity-checked, and memory-measured) for.
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 8
    # Decoder stages: tokens their KV cache holds per sequence (0 = the model's default); used
    # by `streetcascade plan` before anything is built.
    max_tokens: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)] = 0
    # "fused": every scaled_dot_product_attention exported as ONNX Runtime's MultiHeadAttention
    # contrib op (onnxruntime target only; compile/fused_attention.py). "plain": MatMul/Softmax/MatMul.
    attention: Literal["plain", "fused"] = "plain"
    # Parity gate: max abs error on probabilities vs. PyTorch; 0 = the precision's default
    # (fp32 1e-4, int8-dynamic 0.15).
    parity_tolerance: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    seed: int = 0
    # OCR stages: the roadwork phrases to look for; evidence stages (OCR, VLM judge): how what
    # they find moves the earlier probability (streetcascade/evidence.py); defaults when absent.
    evidence: Vocabulary | None = None
    combine: LogOddsRule | None = None
    # VLM judge stages (families qwen2.5-vl, qwen3-vl): prompt, answer words, resolution
    # (streetcascade/vlm.py); defaults when absent.
    judge: JudgeSettings | None = None
    # precision "int4": block size, symmetry, kernel accuracy level, layers kept float ([stages.int4]).
    int4: Int4Config | None = None

    def __post_init__(self):
        # msgspec reports a ValueError here as a ValidationError naming the stage's path.
        if self.exit_low > self.exit_high:
            raise ValueError(f"need exit_low <= exit_high, got {self.exit_low} > {self.exit_high}")
        if self.int4 is not None and self.precision != "int4":
            raise ValueError(f"an int4 table is set but precision is {self.precision!r}: set precision = \"int4\" or remove [stages.int4]")

    @property
    def int4_settings(self) -> Int4Config:
        """The int4 settings (defaults when the table is absent)."""
        return self.int4 or Int4Config()

    @property
    def thresholds(self) -> StageThresholds:
        return StageThresholds(self.exit_low, self.exit_high, self.temperature)


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
    split_fractions: tuple[Fraction, Fraction, Fraction] = (0.2, 0.4, 0.4)
    challenge_seed: int = 0
    # How many challenges (validator mix) to calibrate on / to gate on.
    calibration_samples: Annotated[int, msgspec.Meta(ge=1)] = 128
    validation_samples: Annotated[int, msgspec.Meta(ge=1)] = 512
    method: CalibrationMethod = "minmax"
    percentile: Annotated[float, msgspec.Meta(ge=90.0, le=100.0)] = 99.999  # for method = "percentile"
    # Accuracy gate: quantized vs FP32 engine on the validation split; over a limit -> refused.
    max_flip_rate: Limit = 0.005
    max_mcc_drop: Limit = 0.01
    max_accuracy_drop: Limit = 0.01
    max_auc_drop: Limit = 0.01
    # Largest |p_int8 - p_fp32| on any validation image; 1.0 = not checked.
    max_prob_error: Limit = 1.0
    # Leave the N most harmful layers (by a per-layer sensitivity pass) in FP32. 2: what brought ViT-S/16
    # to the 0.5% flip limit (not under it) at ~no speed cost (docs/quantization.md); 0 = no pass.
    sensitivity_keep_fp32: Annotated[int, msgspec.Meta(ge=0)] = 2
    # Images used by the sensitivity pass (a prefix of the validation challenges); 0 = all.
    sensitivity_samples: Annotated[int, msgspec.Meta(ge=0)] = 64
    # Quantize the first patch-embedding Conv and the classification head too (default: FP32).
    quantize_patch_embed: bool = False
    quantize_head: bool = False

    def __post_init__(self):
        if self.data and self.parquet:
            raise ValueError("give either `data` (image folder) or `parquet`, not both")
        if self.labels_csv and not self.data:
            raise ValueError("labels_csv needs `data` (the folder the CSV's file names are relative to)")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must sum to 1, got {list(self.split_fractions)}")

    def has_data(self) -> bool:
        return bool(self.data or self.parquet)


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
        if stage.precision in GATED_PRECISIONS and (config.calibration is None or not config.calibration.has_data()):
            raise ConfigError(
                f"{path}: $.stages[{i}].precision: {stage.precision} is gated against FP32 on labelled data (and int8 calibrated on it): "
                "add a [calibration] table with "
                "`data = \"FOLDER\"` (roadwork/ + no_roadwork/) or `parquet = [\"FILE.parquet\"]`"
            )
    return config


def stage_thresholds(config: CascadeConfig) -> dict[str, StageThresholds]:
    """Each stage's thresholds as the config says now.

    `classify/eval/serve --config` apply these over the manifest's values, so a config
    rewritten by `streetcascade tune` takes effect without recompiling.
    """
    return {s.name: s.thresholds for s in config.stages}


def resolve_relative(config_path: str | Path, value: str) -> Path:
    """Paths in a config are relative to the config file, not the working directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (Path(config_path).resolve().parent / p).resolve()


def stage_rules(config: CascadeConfig) -> dict[str, LogOddsRule]:
    """The combination rules set in the config (evidence stages; e.g. written by `tune`)."""
    return {s.name: s.combine for s in config.stages if s.combine is not None}


def write_stage_thresholds(config_path: str | Path, thresholds: dict[str, StageThresholds], combine: dict[str, LogOddsRule] | None = None) -> None:
    """Set exit_low / exit_high / temperature (and, for evidence stages, the `combine` rule) of
    the named stages in the config file, keeping everything else as written (comments, order,
    inline tables: tomlkit edits the document). The result is re-read and checked before it
    replaces the file."""
    import os

    import tomlkit

    path = Path(config_path)
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except (OSError, tomlkit.exceptions.ParseError) as exc:
        raise ConfigError(f"{path}: cannot read it to write thresholds: {exc}") from None
    tables = {str(t.get("name")): t for t in doc.get("stages", [])}
    missing = sorted(set(thresholds) - set(tables))
    if missing:
        values = "; ".join(f"{n}: {msgspec.to_builtins(t)}" for n, t in thresholds.items())
        raise ConfigError(f"{path}: no [[stages]] table for {missing}; set by hand: {values}")
    for name, t in thresholds.items():
        for key, value in msgspec.structs.asdict(t).items():
            tables[name][key] = float(value)
    missing_rule = sorted(set(combine or {}) - set(tables))
    if missing_rule:
        raise ConfigError(f"{path}: no [[stages]] table for {missing_rule}")
    for name, rule in (combine or {}).items():
        table = tomlkit.inline_table()
        table.update({k: float(v) for k, v in msgspec.structs.asdict(rule).items()})
        tables[name]["combine"] = table
    tmp = path.with_name(f".{path.name}.tune-{os.getpid()}")
    tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
    try:
        try:
            written = stage_thresholds(load_config(tmp))
        except ConfigError as exc:
            raise ConfigError(f"{path}: the new thresholds would make it invalid, file left unchanged: {str(exc).split(': ', 1)[-1]}") from None
        wrong = {n: written[n] for n, t in thresholds.items() if written[n] != t}
        rules = {st.name: st.combine for st in load_config(tmp).stages}
        wrong.update({n: rules.get(n) for n, r in (combine or {}).items() if rules.get(n) != r})
        if wrong:
            raise ConfigError(f"{path}: rewriting gave {wrong}, expected {thresholds}; file left unchanged")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
