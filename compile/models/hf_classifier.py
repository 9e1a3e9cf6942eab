"""Any transformers `AutoModelForImageClassification` checkpoint (ViT, ConvNeXtV2, ...):
the roadwork logit is the log-odds of a configurable positive label.

The subnet's base miner is a ViT-B/16 of this kind (2 labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from streetcascade.config import StageConfig
from streetcascade.errors import CompileError

from .base import (
    Checkpoint,
    ClassifierFamily,
    Normalization,
    UInt8Preprocess,
    load_or_fail,
    logit_from_logits,
    numpy_preprocess,
    open_checkpoint,
)

RANDOM_PRESETS = {
    # ViT-B/16 with two labels: the shape of the subnet's base miner.
    "vitb16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
}
POSITIVE_NAMES = ("roadwork", "road_work", "construction", "yes", "positive", "true", "1")


def positive_index(stage: StageConfig, id2label: dict, num_labels: int) -> int:
    if num_labels == 1:
        return 0
    wanted = stage.positive_label.strip()
    labels = {int(k): str(v) for k, v in id2label.items()}
    if wanted:
        if wanted.isdigit() and int(wanted) < num_labels:
            return int(wanted)
        for i, name in labels.items():
            if name.lower() == wanted.lower():
                return i
        raise CompileError(f"stage {stage.name}: positive_label {wanted!r} is not one of {sorted(labels.values())}")
    for i, name in labels.items():
        if name.lower() in POSITIVE_NAMES:
            return i
    if num_labels == 2:
        return 1
    raise CompileError(f"stage {stage.name}: {num_labels} labels; set positive_label to one of {sorted(labels.values())}")


class HfClassifier(nn.Module):
    def __init__(self, model, positive: int, norm: Normalization):
        super().__init__()
        self.preprocess = UInt8Preprocess(norm)
        self.model = model
        self.positive = positive

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values=self.preprocess(pixels)).logits
        return logit_from_logits(logits, self.positive)


# ViT's image processor default (the random presets have no preprocessor_config.json).
VIT_NORM = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
LABELS = {0: "no_roadwork", 1: "roadwork"}


def random_vit(preset: str, image_size: int):
    from transformers import ViTConfig, ViTForImageClassification

    if preset not in RANDOM_PRESETS:
        raise CompileError(f"random:{preset}: unknown preset; known: {', '.join(RANDOM_PRESETS)}")
    cfg = ViTConfig(**RANDOM_PRESETS[preset], image_size=image_size, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    return ViTForImageClassification(cfg).eval()


def pretrained_classifier(directory: str):
    from transformers import AutoConfig, AutoModelForImageClassification

    load_or_fail("config", directory, lambda: AutoConfig.from_pretrained(directory))
    return AutoModelForImageClassification.from_pretrained(directory).eval()


class HfClassifierFamily(ClassifierFamily):
    name = "hf-classifier"

    def open(self, stage: StageConfig, config_path: Path) -> Checkpoint:
        return open_checkpoint(
            stage,
            config_path,
            random_model=lambda preset: (random_vit(preset, stage.input_size), VIT_NORM),
            pretrained_model=pretrained_classifier,
        )

    def classifier(self, ckpt: Checkpoint, stage: StageConfig, config_path: Path):
        model, norm = ckpt.model, ckpt.norm
        config = model.config
        image_size = getattr(config, "image_size", None)
        if isinstance(image_size, int) and image_size != stage.input_size and getattr(config, "model_type", "") == "vit":
            raise CompileError(f"stage {stage.name}: ViT checkpoint is trained at {image_size}px, input_size is {stage.input_size}")
        positive = positive_index(stage, config.id2label or {}, config.num_labels)
        module = HfClassifier(model, positive, norm)
        notes = [f"positive label: {config.id2label.get(positive, positive) if config.id2label else positive} (index {positive})"]

        def reference(images: np.ndarray) -> np.ndarray:
            pixel_values = torch.from_numpy(numpy_preprocess(images, norm))
            with torch.no_grad():
                logits = model(pixel_values=pixel_values).logits.double()
            probs = torch.softmax(logits, dim=-1)[:, positive] if logits.shape[-1] > 1 else torch.sigmoid(logits[:, 0])
            probs = probs.clamp(1e-300, 1 - 1e-16)
            return torch.log(probs / (1 - probs)).numpy()

        return module, reference, notes

    def write_test_checkpoint(self, directory: Path, seed: int = 0) -> Path:
        import json

        torch.manual_seed(seed)
        random_vit("tiny", 224).save_pretrained(directory)
        (Path(directory) / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(VIT_NORM.mean), "image_std": list(VIT_NORM.std), "rescale_factor": 1 / 255}))
        return Path(directory)


FAMILY = HfClassifierFamily()
