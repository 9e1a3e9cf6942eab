"""The engine-set manifest (engines/<target>/manifest.json): what was built, from what,
for which machine, and how close it is to the PyTorch reference.

The runtime reads it before loading anything: hashes, target and library versions must
match, else `EngineMismatch` says exactly what differs.
"""

from __future__ import annotations

import hashlib
from typing import Literal
from pathlib import Path

import msgspec

from streetcascade.errors import ConfigError, EngineMismatch
from streetcascade.evidence import LogOddsRule, Vocabulary
from streetcascade.settings import StageThresholds
from streetcascade.structs import load_json, write_json

MANIFEST_NAME = "manifest.json"
# 2: per-graph memory account (weights / activations / host buffers), nested io and thresholds,
# stage kinds.
FORMAT_VERSION = 2


class TensorSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    # ints for fixed axes, strings for named dynamic axes (e.g. "batch")
    shape: list[int | str]
    dtype: str  # numpy dtype name: "uint8", "float32", ...


class GraphIO(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A graph's inputs and outputs as the runtime feeds them, and the largest batch the engine
    was built, checked and measured for (the "batch" axis runs 1..max_batch)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch: int = 1
    # Sizes of named axes other than "batch" (an OCR graph's height and width) used for warm-up
    # and the memory measurement: the largest the stage feeds.
    axis_sizes: dict[str, int] = {}


class MemoryAccount(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one engine needs, as its backend measured it (`Engine.memory`) at max_batch.

    `weights_bytes` and `activations_bytes` live on `device` (host RAM for "cpu");
    `host_buffers_bytes` is host memory per slot (the IO buffers; pinned on a GPU). The runtime's
    planner (runtime/plan.py) adds these up against the budget before loading anything.
    """

    device: str  # "cpu" | "cuda"
    weights_bytes: int
    activations_bytes: int  # workspace + intermediate tensors at max_batch
    host_buffers_bytes: int  # per slot
    method: str  # how the figures were obtained, e.g. "rss-peak" (host: session RSS growth, peak RSS growth of the first run) or "tensorrt-engine"


class TargetInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str  # e.g. "cpu-x86_64", "sm89-rtx4090"
    backend: str  # runtime.backends registry name
    device: str  # "cpu" | "cuda"
    arch: str  # machine architecture, e.g. "x86_64"
    # CPU ISA features the graphs may rely on (offline-optimised ORT graphs can be ISA-specific).
    cpu_features: list[str] = []
    sm: str | None = None  # CUDA compute capability for GPU targets, e.g. "8.9"
    # GPU targets: what the engines were built on (engines are valid for one SM + library version).
    gpu_name: str = ""  # e.g. "NVIDIA GeForce RTX 4090"
    driver_version: str = ""  # CUDA driver API version, e.g. "12.8"
    cuda_version: str = ""  # CUDA runtime version, e.g. "12.8"
    execution_provider: str = ""  # onnxruntime on cuda: "cuda" or "tensorrt"
    # `backend = "auto"`: how this backend was chosen (each candidate's measured latency).
    selection: "TargetSelection | None" = None


class TargetSelection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`[target] backend = "auto"` on a CPU: every candidate built the first classifier stage,
    and the one with the lowest median batch-1 latency, measured side by side, was kept."""

    stage: str  # the stage that was timed
    batch: int
    runs: int  # timed runs per candidate (interleaved rounds)
    median_ms: dict[str, float]  # backend -> median latency
    skipped: dict[str, str] = {}  # backend -> why it was not a candidate (not installed, precision)


class CompanionFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A file an engine file needs next to it (an OpenVINO graph's weights `.bin`)."""

    file: str  # relative to the engine-set folder
    sha256: str
    size_bytes: int


class Parity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reference: str  # what it was compared with, e.g. "pytorch-fp32-eager"
    n_images: int
    max_abs_prob_error: float
    max_abs_logit_error: float
    tolerance: float  # on probabilities
    # Fraction of images whose rounded decision differs from the reference.
    decision_flips: float = 0.0


class LayerHarm(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What quantizing one layer alone (all others FP32) does on the sensitivity images."""

    name: str  # ONNX node name
    flip_rate: float
    mean_abs_prob_error: float
    max_abs_prob_error: float


class AccuracyGate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A quantized engine vs the FP32 engine on the validation split under the validator mix."""

    reference: str  # "onnxruntime-fp32"
    split: str  # "validation"
    n_images: int
    n_calibration: int
    method: str  # calibration method: minmax | entropy | percentile
    quantized_nodes: int
    flip_rate: float  # fraction of rounded decisions that differ from FP32
    max_abs_prob_error: float
    mean_abs_prob_error: float
    accuracy_fp32: float
    accuracy_quant: float
    mcc_fp32: float
    mcc_quant: float
    auc_fp32: float | None
    auc_quant: float | None
    max_flip_rate: float
    max_mcc_drop: float
    max_accuracy_drop: float
    max_auc_drop: float
    passed: bool
    max_prob_error: float = 1.0
    kept_fp32: list[str] = []  # weighted layers left FP32 by the sensitivity pass
    harmful_layers: list[LayerHarm] = []  # worst first (when a sensitivity pass ran)


class LatencyRatio(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The engine's latency against a reference run of the same model, timed side by side
    (interleaved rounds, one process) at compile time on the build machine. Absolute times move
    from machine to machine and minute to minute on a shared box; the ratio moves much less, and
    is what the latency-regression suite (tests/latency/) re-measures and compares."""

    reference: str  # "pytorch-eager-cpu" | "pytorch-eager-cuda" (the exported module) | "onnx-source-onnxruntime"
    batch: int
    runs: int  # timed calls of each side
    engine_p50_ms: float
    engine_p99_ms: float
    reference_p50_ms: float
    reference_p99_ms: float
    ratio_p50: float  # engine / reference; below 1 = the engine is faster
    ratio_p99: float


class WeightQuant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Weight-only 4-bit quantization of a graph (`precision = "int4"`, compile/int4.py): what
    was converted, how, and what it saved. The activations stay float."""

    method: str  # "rtn" (round to nearest, ONNX Runtime / NNCF), "awq" (AutoAWQ's ints imported), "awq+rtn"
    bits: int
    block_size: int  # values per scale along K (AWQ: the checkpoint's group size, or a power-of-two divisor)
    symmetric: bool  # no zero points (AWQ is always asymmetric)
    accuracy_level: int  # MatMulNBits compute: 0 = float activations, 4 = int8 activations (faster)
    converted: int  # MatMuls whose weights are 4-bit now
    awq_layers: int = 0  # of those, weights taken from the AutoAWQ checkpoint's own ints
    kept_float: list[str] = []  # constant-weight MatMuls left float (keep_float, or not in the AWQ checkpoint)
    bytes_before: int = 0  # the converted weights in float32
    bytes_after: int = 0  # the same as 4-bit codes + scales + zero points
    embeddings: int = 0  # embedding tables (Gathers) made 4-bit too ([stages.int4] embeddings = "int4"; not in the bytes above)

    def summary(self) -> str:
        ratio = self.bytes_before / max(1, self.bytes_after)
        src = f", {self.awq_layers} from the AWQ checkpoint" if self.awq_layers else ""
        return (f"{self.converted} MatMul(s) to {self.bits}-bit ({self.method}, block {self.block_size}, "
                f"{'symmetric' if self.symmetric else 'zero points'}, accuracy_level {self.accuracy_level}{src}): "
                f"{self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB ({ratio:.1f}x); "
                f"{len(self.kept_float)} kept float" + (f"; {self.embeddings} embedding table(s) 4-bit" if self.embeddings else ""))


class GraphEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: str  # what the graph does in its stage: "classifier" for stage-1 graphs
    file: str  # relative to the engine-set folder
    sha256: str
    size_bytes: int
    precision: str
    io: GraphIO
    parity: Parity
    memory: MemoryAccount  # measured at compile time by the target's backend
    # Quantized graphs built with calibration data (int8-static): the accuracy gate's figures.
    accuracy_gate: AccuracyGate | None = None
    # Targets that build an engine per GPU (TensorRT, AOTInductor): how it was built.
    build: "BuildInfo | None" = None
    # GPU targets built from ONNX: the engine vs the FP32 ONNX Runtime engine of the same graph
    # on the CPU, on the parity images (over tolerance, the build is refused).
    parity_onnxruntime: Parity | None = None
    # Files the engine file loads from beside it; hashed and checked like it.
    companions: list[CompanionFile] = []
    # Batch-1 latency against the reference, measured at compile time ([target] latency_runs).
    latency: LatencyRatio | None = None

    # precision int4: the 4-bit weights (block size, AWQ or round-to-nearest, bytes saved).
    weight_quant: WeightQuant | None = None


class BuildInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a GPU engine was built: its optimisation profile per input (batch min / opt / max),
    the library's own figures, and the build time."""

    builder: str  # "tensorrt 10.13.0", "torch 2.11.0 aoti"
    profiles: dict[str, list[list[int]]] = {}  # input name -> [min shape, opt shape, max shape]
    device_memory_bytes: int = 0  # TensorRT: ICudaEngine.device_memory_size_v2 (scratch at max profile)
    weights_bytes: int = 0
    build_seconds: float = 0.0
    timing_cache: str = ""  # the timing cache file used and updated (relative to engines_dir)


class VlmEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A VLM judge stage (stage kind "vlm"): what its runtime needs besides the graphs (the
    prompt as token ids, the answer tokens, how images become patches) and what was measured at
    compile time (tokens per image, latency, end-to-end parity against transformers)."""

    model: str  # the host-side preparation (runtime/vlm_host.py PREPARATIONS): "qwen2.5-vl" | "qwen3-vl" | "smolvlm"
    prompt: str  # the question asked
    # The rendered chat prompt as token ids, with ONE image_token_id where the image's tokens go.
    prompt_ids: list[int]
    image_token_id: int
    answer_tokens: list[str]  # as the tokenizer spells them (columns of the prefill's answer_logits)
    answer_ids: list[int]
    answer_yes: list[bool]  # which answer tokens mean "yes"
    # Image preparation (the processor's): Qwen-VL: resize to min..max pixels, sides multiples
    # of patch_size x merge_size, x * rescale, (x - mean) / std, patches of temporal x patch x
    # patch. SmolVLM: longest edge to resize_longest_edge, then image_side square (merge_size is
    # its pixel-shuffle scale factor; min = max pixels = image_side**2).
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    mean: list[float]
    std: list[float]
    rescale: float
    window_size: int = 0  # Qwen2.5-VL: window attention size in pixels
    pos_embed_side: int = 0  # Qwen3-VL: side of the learned position-embedding grid
    deepstack_layers: int = 0  # Qwen3-VL: vision features added after the first N decoder layers
    resample: Literal["bicubic", "bilinear", "lanczos"] = "bicubic"  # the processor's resize filter (Pillow)
    resize_longest_edge: int = 0  # SmolVLM: first resize, longest edge to this (aspect kept); 0 = none
    image_side: int = 0  # SmolVLM: then resized to image_side x image_side (the one global image)
    vision_tokens: int = 0  # language-model tokens per image at the configured resolution (square image)
    max_tokens: int = 0  # prompt + image tokens the prefill was measured for
    expected_ms: float = 0.0  # one image, end to end, measured at compile time
    # The compiled chain (numpy preparation, vision graph, prefill graph) against transformers'
    # full forward on the same images, on the answer logits.
    parity: Parity | None = None


class StageEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    kind: str  # how the runtime runs it (runtime.stages registry): "classifier"
    family: str
    source: str
    source_sha256: str  # hash over the checkpoint's weight/config files (+ head)
    placeholder_weights: bool  # True: random weights, NOT a detector
    input_size: int
    thresholds: StageThresholds
    graphs: list[GraphEntry]
    notes: list[str] = []
    # Evidence stages (OCR, VLM judge): the combination rule they run with; OCR: the vocabulary.
    evidence: Vocabulary | None = None
    combine: LogOddsRule | None = None
    # VLM judge stages: prompt ids, answer tokens, image preparation, measured figures.
    vlm: VlmEntry | None = None


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format_version: int
    target: TargetInfo
    stages: list[StageEntry]
    library_versions: dict[str, str]
    built_at: str  # ISO 8601 UTC
    build_seconds: float
    config_sha256: str


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(engine_dir: str | Path) -> Manifest:
    path = Path(engine_dir) / MANIFEST_NAME
    if not path.exists():
        raise EngineMismatch(f"{engine_dir}: no {MANIFEST_NAME}; is this an engine set? (build one with `streetcascade compile`)")
    _check_format_version(path)
    try:
        manifest = load_json(path, Manifest)
    except ConfigError as exc:  # a damaged manifest is a damaged engine set
        raise EngineMismatch(str(exc)) from None
    return manifest


def _check_format_version(path: Path) -> None:
    """An older manifest fails the strict decode on its first changed field; say why instead."""

    class Version(msgspec.Struct):
        format_version: int = 0

    try:
        found = msgspec.json.decode(path.read_bytes(), type=Version).format_version
    except (msgspec.DecodeError, msgspec.ValidationError):
        return  # not even that: the full decode below names the problem
    if found != FORMAT_VERSION:
        raise EngineMismatch(
            f"{path}: manifest format_version {found}, this streetcascade reads {FORMAT_VERSION}; "
            "recompile with `streetcascade compile`"
        )


def write_manifest(engine_dir: str | Path, manifest: Manifest) -> Path:
    path = Path(engine_dir) / MANIFEST_NAME
    write_json(path, manifest)
    return path


def iter_graphs(manifest: Manifest):
    """(stage, graph) for every graph of the engine set, in stage order."""
    for stage in manifest.stages:
        for graph in stage.graphs:
            yield stage, graph


def verify_files(engine_dir: str | Path, manifest: Manifest) -> None:
    """Every graph file exists and has the recorded hash."""
    for stage, graph in iter_graphs(manifest):
        _check_file(Path(engine_dir) / graph.file, graph.sha256, stage.name)
        for companion in graph.companions:
            _check_file(Path(engine_dir) / companion.file, companion.sha256, stage.name)


def _check_file(path: Path, sha256: str, stage: str) -> None:
    if not path.exists():
        raise EngineMismatch(f"{path}: listed in the manifest (stage {stage}) but missing")
    digest = sha256_file(path)
    if digest != sha256:
        raise EngineMismatch(
            f"{path}: sha256 {digest[:16]}... differs from the manifest's {sha256[:16]}...; "
            "the file was changed or replaced: rebuild with `streetcascade compile`"
        )
