"""What a model family provides, and the pieces every family shares.

A family turns a stage config into an `ExportableModel`: a torch module that takes the
runtime's input (uint8 NHWC RGB, already resized) and returns one roadwork logit per image,
plus an *independent* reference forward (numpy preprocessing + the unmodified Hugging Face
forward) that the parity gate compares the exported graph against.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from streetcascade.config import StageConfig, resolve_relative
from streetcascade.errors import CompileError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Files that define a checkpoint's behaviour (hashed into the manifest).
CHECKPOINT_PATTERNS = ("*.json", "*.safetensors", "*.bin", "*.txt", "*.model")


@dataclass(frozen=True)
class Normalization:
    """How a checkpoint expects pixels: x * rescale, then (x - mean) / std, per channel."""

    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    rescale: float = 1.0 / 255.0


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
class ExportableModel:
    module: nn.Module  # uint8 [N, S, S, 3] -> float32 logit [N]
    reference: Callable[[np.ndarray], np.ndarray]  # same contract, independent path
    source_sha256: str
    placeholder: bool  # random weights: must never be passed off as a detector
    notes: list[str] = field(default_factory=list)


class ModelFamily(Protocol):
    name: str

    def load(self, stage: StageConfig, config_path: Path) -> ExportableModel: ...


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
        x = pixels.permute(0, 3, 1, 2).to(torch.float32)
        return x * self.scale + self.shift


def numpy_preprocess(images: np.ndarray, norm: Normalization) -> np.ndarray:
    """The reference path's preprocessing, written independently of `UInt8Preprocess`."""
    x = images.astype(np.float32) * np.float32(norm.rescale)
    x = (x - np.asarray(norm.mean, dtype=np.float32)) / np.asarray(norm.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def logit_from_logits(logits: torch.Tensor, positive: int) -> torch.Tensor:
    """Log-odds of the positive class: one logit as is; for N >= 2 classes
    l_pos - logsumexp(l_others), which equals logit(softmax(logits)[pos])."""
    if logits.shape[-1] == 1:
        return logits[:, 0]
    others = torch.cat([logits[:, :positive], logits[:, positive + 1 :]], dim=-1)
    return logits[:, positive] - torch.logsumexp(others, dim=-1)


def load_or_fail(what: str, source: str, loader: Callable):
    try:
        return loader()
    except CompileError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CompileError(f"checkpoint {source!r}: cannot load {what}: {type(exc).__name__}: {first}") from None
