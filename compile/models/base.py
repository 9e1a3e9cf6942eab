"""What a model family declares and provides, and the pieces every family shares.

Like optimum's exporter configs, a family *declares* its graphs (`graphs(stage)`: role, input
and output names, dtypes and named dynamic axes, opset, what preprocessing the graph holds)
without loading any weights, and `load` returns, per declared graph, a torch module with that
contract plus an *independent* reference forward (numpy preprocessing + the unmodified Hugging
Face forward) that the parity gate compares the built engine against. `write_test_checkpoint`
saves a tiny random-initialised checkpoint from the family's real config class, so one
meta-test (tests/compile/test_families.py) can build, export, check and load every family.

The checkpoint-opening flow (random preset / local dir / hub id -> model, normalisation,
source hash, placeholder flag) is `open_checkpoint`, shared by every family.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from streetcascade.config import StageConfig, resolve_relative
from streetcascade.errors import CompileError
from streetcascade.manifest import GraphIO

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Files that define a checkpoint's behaviour (hashed into the manifest).
CHECKPOINT_PATTERNS = ("*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "*.jinja")  # .jinja: a chat template
OPSET = 17  # LayerNormalization is a single FP32-friendly op from 17 on


@dataclass(frozen=True)
class GraphDecl:
    """One graph a family exports: its role in the stage, its IO contract (string dims are named
    dynamic axes, e.g. "batch"), the opset, and how parity is checked for it."""

    role: str
    io: GraphIO
    opset: int = OPSET
    # How the parity gate compares it with the reference: "classifier" = probabilities of one
    # logit per image on sample photos + synthetic images; "tensor" = every output value on the
    # family's example inputs (graphs that are not classifiers, e.g. OCR); "relative" = the same,
    # the error relative to the largest reference value (features of any scale, a VLM's vision
    # tower); "judge" = a yes/no judge's outputs: p(yes) from its `yes_logodds` output within
    # the tolerance, every output's largest difference recorded.
    parity: str = "classifier"
    preprocessing: str = ""  # what the graph does to its input before the model, for the manifest
    # Built at this precision whatever the stage's ("" = the stage's): a VLM's vision tower.
    precision: str = ""
    # False: the graph's attention is masked or causal (a VLM's prefill, Qwen2.5-VL's windows),
    # which `attention = "fused"` (ONNX Runtime's MultiHeadAttention) leaves plain.
    attention_fusable: bool = True


@dataclass(frozen=True)
class Normalization:
    """How a checkpoint expects pixels: x * rescale, then (x - mean) / std, per channel."""

    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    rescale: float = 1.0 / 255.0

    def describe(self) -> str:
        fmt = lambda v: ", ".join(f"{x:.4g}" for x in v)  # noqa: E731
        return f"uint8 NHWC RGB -> x * {self.rescale:.4g}, (x - [{fmt(self.mean)}]) / [{fmt(self.std)}], NCHW float32 (in the graph)"


def processor_normalization(directory: str | Path, default: Normalization = Normalization()) -> Normalization:
    """Read the checkpoint's preprocessor_config.json (HF image processors); `default` when absent."""
    import json

    path = Path(directory) / "preprocessor_config.json"
    if not path.exists():
        return default
    try:
        cfg = json.loads(path.read_text())
    except ValueError as exc:
        raise CompileError(f"{path}: not valid JSON ({exc})") from None
    if cfg.get("do_normalize", True):
        mean, std = tuple(cfg.get("image_mean", default.mean)), tuple(cfg.get("image_std", default.std))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    rescale = float(cfg.get("rescale_factor", default.rescale)) if cfg.get("do_rescale", True) else 1.0
    return Normalization(mean, std, rescale)


@dataclass
class ExportableGraph:
    decl: GraphDecl
    module: nn.Module | None  # takes and returns what decl.io says (None: the graph already is ONNX)
    # "classifier" parity: images -> logits, an independent path. "tensor" parity: feeds -> outputs.
    reference: Callable
    onnx_source: Path | None = None  # a ready ONNX graph, copied instead of exported
    parity_feeds: list[dict[str, np.ndarray]] | None = None  # "tensor" parity: the example inputs
    metadata: dict[str, str] = field(default_factory=dict)  # stored in the ONNX file (e.g. a tokenizer)
    # Inputs to trace the export with (default: zeros of the declared shapes, named axes at 2):
    # graphs whose axes must agree with each other (a VLM's patches and windows).
    example: dict[str, np.ndarray] | None = None


@dataclass
class ExportableModel:
    graphs: list[ExportableGraph]
    source_sha256: str
    placeholder: bool  # random weights: must never be passed off as a detector
    notes: list[str] = field(default_factory=list)
    # Checks of the stage as a whole once its graphs are built (a VLM: the chain of graphs against
    # the PyTorch model, the accuracy gate of lossy precisions); returns the (amended) entry.
    finish: Callable[["BuiltStage"], Any] | None = None


@dataclass
class BuiltStage:
    """A stage whose graphs are built (in `workdir`, not yet in the engine set), for
    `ExportableModel.finish`: its manifest entry so far and how to load its engines."""

    entry: Any  # StageEntry
    workdir: Path
    config: Any  # CascadeConfig
    config_path: Path
    load: Callable[[str], Any]  # role -> the built engine, loaded through the target's backend
    progress: Any

    def raw(self, role: str) -> Path:
        """The exported FP32 ONNX graph of a role (the accuracy gate's reference)."""
        return self.workdir / f"{self.entry.name}.{role}.raw.onnx"


@dataclass
class Checkpoint:
    """An opened checkpoint: the model object, how it wants pixels, where it came from."""

    model: Any
    norm: Normalization
    source_sha256: str
    placeholder: bool
    directory: str | None  # None for random presets


@dataclass(frozen=True)
class Source:
    kind: str  # "random" | "local" | "hub"
    value: str  # preset name, directory, or hub id


def resolve_source(source: str, config_path: Path) -> Source:
    if source.startswith("random:"):
        return Source("random", source.removeprefix("random:"))
    path = resolve_relative(config_path, source)
    if path.is_dir():
        return Source("local", str(path))
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") != 1
    if looks_like_path:
        raise CompileError(f"checkpoint {source!r}: no such directory ({path})")
    return Source("hub", source)


def fetch_hub_snapshot(repo_id: str) -> str:
    """Download a hub checkpoint (compile time only) and return its local directory."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, allow_patterns=list(CHECKPOINT_PATTERNS))
    except Exception as exc:
        raise CompileError(
            f"checkpoint {repo_id!r}: cannot download from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); download it elsewhere and point `source` at the local directory"
        ) from None


def hash_checkpoint(directory: str | Path, extra: list[Path] = ()) -> str:
    h = hashlib.sha256()
    root = Path(directory)
    files = sorted({p for pattern in CHECKPOINT_PATTERNS for p in root.glob(pattern) if p.is_file()})
    for p in [*files, *extra]:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load_or_fail(what: str, source: str, loader: Callable):
    try:
        return loader()
    except CompileError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CompileError(f"checkpoint {source!r}: cannot load {what}: {type(exc).__name__}: {first}") from None


def open_checkpoint(
    stage: StageConfig,
    config_path: Path,
    random_model: Callable[[str], tuple[Any, Normalization]],
    pretrained_model: Callable[[str], Any],
) -> Checkpoint:
    """The one way a family opens `stage.source`: `random:<preset>` builds placeholder weights
    (seeded by the stage), a hub id is downloaded (compile time only), a directory is read;
    errors become CompileError naming the source."""
    source = resolve_source(stage.source, config_path)
    if source.kind == "random":
        torch.manual_seed(stage.seed)
        model, norm = random_model(source.value)
        return Checkpoint(model, norm, hash_text(f"{stage.source}:{stage.seed}"), True, None)
    directory = fetch_hub_snapshot(source.value) if source.kind == "hub" else source.value
    # An AutoAWQ checkpoint loads as its exact dequantized float32 copy (precision int4 then
    # imports its own 4-bit codes into the exported graph: compile/int4.py).
    from ..int4 import float_checkpoint

    weights = str(float_checkpoint(directory))
    model = load_or_fail("weights", stage.source, lambda: pretrained_model(weights))
    return Checkpoint(model, processor_normalization(directory), hash_checkpoint(directory), False, directory)


class ModelFamily(ABC):
    """A family: how to open its checkpoints, what graphs it exports, its reference forward."""

    name: ClassVar[str]
    kind: ClassVar[str]  # the runtime stage kind its engines run as (runtime/stages.py)

    @abstractmethod
    def graphs(self, stage: StageConfig) -> list[GraphDecl]:
        """The graphs this family exports for `stage`, declared without loading weights."""

    @abstractmethod
    def load(self, stage: StageConfig, config_path: Path) -> ExportableModel:
        """One ExportableGraph per declared graph, in the same order."""

    @abstractmethod
    def write_test_checkpoint(self, directory: Path, seed: int = 0) -> Path:
        """Save a tiny random-initialised checkpoint (the family's real config class, test
        sizes) the way a real one is laid out on disk; returns its directory."""


class UInt8Preprocess(nn.Module):
    """In-graph preprocessing: uint8 NHWC -> float NCHW, scaled and normalised, so the
    runtime only decodes and resizes."""

    def __init__(self, norm: Normalization):
        super().__init__()
        mean, std, rescale = norm.mean, norm.std, norm.rescale
        mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # Fold rescale and normalisation into one multiply-add: x * scale + shift.
        self.register_buffer("scale", rescale / std)
        self.register_buffer("shift", -mean / std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # The buffers' dtype: float32 in the exported graphs, float16 when a PyTorch-compiled
        # target (AOTInductor) builds the module in half precision.
        x = pixels.permute(0, 3, 1, 2).to(self.scale.dtype)
        return x * self.scale + self.shift


def numpy_preprocess(images: np.ndarray, norm: Normalization) -> np.ndarray:
    """The reference path's preprocessing, written independently of `UInt8Preprocess`."""
    x = images.astype(np.float32) * np.float32(norm.rescale)
    x = (x - np.asarray(norm.mean, dtype=np.float32)) / np.asarray(norm.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def logit_from_logits(logits: torch.Tensor, positive: int) -> torch.Tensor:
    """Log-odds of the positive class: one logit as is; for N >= 2 classes
    l_pos - logsumexp(l_others), which equals logit(softmax(logits)[pos]).

    Written so the exported graph has no ReduceLogSumExp: torch.logsumexp exports (opset 13-17)
    as ReduceLogSumExp with an `axes` attribute, which OpenVINO's ONNX reader 2026.3.0-2026.4.1
    ignores, reducing over the batch too (openvinotoolkit/openvino#38238; docs/openvino-reduce.md).
    Two labels (the usual head) need no reduction at all: l_pos - l_other exactly. N > 2: the
    max-shifted form (ReduceMax + ReduceSum, which every reader handles) over a constant-index
    gather, so no zero-width slice appears either."""
    n = logits.shape[-1]
    if n == 1:
        return logits[:, 0]
    if n == 2:
        return logits[:, positive] - logits[:, 1 - positive]
    return logits[:, positive] - logsumexp_last(logits[:, [i for i in range(n) if i != positive]])


def logsumexp_last(x: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(x))) over the last axis, max-shifted (ReduceMax + ReduceSum in the exported
    graph, which every reader handles) instead of torch.logsumexp's ReduceLogSumExp, whose axes
    OpenVINO's reader ignores (see logit_from_logits). -inf entries (masked columns) are fine."""
    top = x.amax(dim=-1, keepdim=True)
    return top[..., 0] + torch.log(torch.exp(x - top).sum(dim=-1))


class ClassifierFamily(ModelFamily):
    """A family whose stage is one classifier graph (uint8 NHWC RGB in, one roadwork logit out).
    Subclasses say how to open the checkpoint and how to wrap it (`classifier`)."""

    kind = "classifier"

    def graphs(self, stage: StageConfig) -> list[GraphDecl]:
        from streetcascade.runtime.classifier import classifier_io

        return [GraphDecl(role="classifier", io=classifier_io(stage.input_size, stage.max_batch))]

    @abstractmethod
    def open(self, stage: StageConfig, config_path: Path) -> Checkpoint: ...

    @abstractmethod
    def classifier(self, ckpt: Checkpoint, stage: StageConfig, config_path: Path) -> tuple[nn.Module, Callable, list[str]]:
        """(module, reference, notes) for an opened checkpoint. Parts of the stage that are not
        in the checkpoint (a separate head file) update `ckpt.source_sha256` / `ckpt.placeholder`."""

    def load(self, stage: StageConfig, config_path: Path) -> ExportableModel:
        from dataclasses import replace

        ckpt = self.open(stage, config_path)
        module, reference, notes = self.classifier(ckpt, stage, config_path)
        if ckpt.placeholder:
            notes.append("PLACEHOLDER weights: this stage is not a roadwork detector")
        decl = replace(self.graphs(stage)[0], preprocessing=ckpt.norm.describe())
        return ExportableModel([ExportableGraph(decl, module.eval(), reference)], ckpt.source_sha256, ckpt.placeholder, notes)
