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
    ExportableModel,
    Normalization,
    UInt8Preprocess,
    fetch_hub_snapshot,
    hash_checkpoint,
    hash_text,
    load_or_fail,
    logit_from_logits,
    numpy_preprocess,
    processor_normalization,
    resolve_source,
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


class HfClassifierFamily:
    name = "hf-classifier"

    def load(self, stage: StageConfig, config_path: Path) -> ExportableModel:
        from transformers import AutoConfig, AutoModelForImageClassification, ViTConfig, ViTForImageClassification

        source = resolve_source(stage.source, config_path)
        if source.kind == "random":
            if source.value not in RANDOM_PRESETS:
                raise CompileError(f"random:{source.value}: unknown preset; known: {', '.join(RANDOM_PRESETS)}")
            torch.manual_seed(stage.seed)
            cfg = ViTConfig(**RANDOM_PRESETS[source.value], image_size=stage.input_size, num_labels=2,
                            id2label={0: "no_roadwork", 1: "roadwork"}, label2id={"no_roadwork": 0, "roadwork": 1})
            model = ViTForImageClassification(cfg).eval()
            source_hash, placeholder = hash_text(f"{stage.source}:{stage.seed}"), True
            norm = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # ViT's processor default
        else:
            directory = fetch_hub_snapshot(source.value) if source.kind == "hub" else source.value
            load_or_fail("config", stage.source, lambda: AutoConfig.from_pretrained(directory))
            model = load_or_fail("weights", stage.source, lambda: AutoModelForImageClassification.from_pretrained(directory).eval())
            norm = processor_normalization(directory)
            source_hash, placeholder = hash_checkpoint(directory), False
        config = model.config
        image_size = getattr(config, "image_size", None)
        if isinstance(image_size, int) and image_size != stage.input_size and getattr(config, "model_type", "") == "vit":
            raise CompileError(f"stage {stage.name}: ViT checkpoint is trained at {image_size}px, input_size is {stage.input_size}")
        positive = positive_index(stage, config.id2label or {}, config.num_labels)
        module = HfClassifier(model, positive, norm).eval()
        notes = [f"positive label: {config.id2label.get(positive, positive) if config.id2label else positive} (index {positive})"]
        if placeholder:
            notes.append("PLACEHOLDER weights: this stage is not a roadwork detector")

        def reference(images: np.ndarray) -> np.ndarray:
            pixel_values = torch.from_numpy(numpy_preprocess(images, norm))
            with torch.no_grad():
                logits = model(pixel_values=pixel_values).logits.double()
            probs = torch.softmax(logits, dim=-1)[:, positive] if logits.shape[-1] > 1 else torch.sigmoid(logits[:, 0])
            probs = probs.clamp(1e-300, 1 - 1e-16)
            return torch.log(probs / (1 - probs)).numpy()

        return ExportableModel(module, reference, source_hash, placeholder, notes)


FAMILY = HfClassifierFamily()
