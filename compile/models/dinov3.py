"""DINOv3 backbone (transformers `DINOv3ViTModel` of any size, or `DINOv3ConvNextModel`) + a
binary head over the CLS token concatenated with the mean of the patch tokens (for ConvNeXt
the "CLS" is its global-pooled token, which its model prepends the same way).

Export: the rotary sin/cos depend only on the (fixed) resolution, so they are computed
once and baked in as constants: no `If`/dynamic tile in the graph (TensorRT and ORT's
symbolic shape inference both choke on those).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from streetcascade.config import StageConfig, resolve_relative
from streetcascade.errors import CompileError

from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Checkpoint,
    ClassifierFamily,
    Normalization,
    UInt8Preprocess,
    hash_checkpoint,
    hash_text,
    load_or_fail,
    numpy_preprocess,
    open_checkpoint,
)
from .head import BinaryHead, load_head, random_head

# Architecture presets of the published DINOv3 ViTs, for placeholder (random) weights.
RANDOM_PRESETS = {
    "vits16": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6),
    "vitb16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "vitl16": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
    # For tests: the same code paths, a fraction of the compute.
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
}
CONVNEXT_PRESETS = {
    "convnext-tiny": dict(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3]),
    "convnext-test": dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
}
COMMON = dict(patch_size=16, num_register_tokens=4, layerscale_value=1e-5, rope_theta=100.0, layer_norm_eps=1e-5)
MODEL_TYPES = ("dinov3_vit", "dinov3_convnext")


def random_backbone(preset: str, image_size: int):
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel, DINOv3ViTConfig, DINOv3ViTModel

    if preset in RANDOM_PRESETS:
        return DINOv3ViTModel(DINOv3ViTConfig(**COMMON, **RANDOM_PRESETS[preset], image_size=image_size)).eval()
    if preset in CONVNEXT_PRESETS:
        return DINOv3ConvNextModel(DINOv3ConvNextConfig(**CONVNEXT_PRESETS[preset], image_size=image_size)).eval()
    raise CompileError(f"random:{preset}: unknown preset; known: {', '.join([*RANDOM_PRESETS, *CONVNEXT_PRESETS])}")


def feature_size(backbone) -> int:
    config = backbone.config
    return 2 * (config.hidden_sizes[-1] if config.model_type == "dinov3_convnext" else config.hidden_size)


def num_prefix_tokens(backbone) -> int:
    """Register tokens between CLS and the patch tokens (ViT only)."""
    return getattr(backbone.config, "num_register_tokens", 0) or 0


def pooled_features(hidden: torch.Tensor, num_register_tokens: int) -> torch.Tensor:
    """CLS token ++ mean of patch tokens (register tokens excluded)."""
    return torch.cat([hidden[:, 0], hidden[:, 1 + num_register_tokens :].mean(dim=1)], dim=-1)


class DinoV3Classifier(nn.Module):
    """uint8 NHWC -> roadwork logit. For the ViT the rotary tables are baked for `image_size`."""

    def __init__(self, backbone, head: BinaryHead, image_size: int, norm: Normalization):
        super().__init__()
        self.preprocess = UInt8Preprocess(norm)
        self.backbone = backbone
        self.head = head
        self.num_register_tokens = num_prefix_tokens(backbone)
        self.is_vit = hasattr(backbone, "rope_embeddings")
        if self.is_vit:
            with torch.no_grad():
                cos, sin = backbone.rope_embeddings(torch.zeros(1, 3, image_size, image_size))
            self.register_buffer("rope_cos", cos.clone())
            self.register_buffer("rope_sin", sin.clone())

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(pixels)
        if self.is_vit:
            hidden = self.backbone.embeddings(x)
            hidden = self.backbone.model(hidden, position_embeddings=(self.rope_cos, self.rope_sin)).last_hidden_state
            hidden = self.backbone.norm(hidden)
        else:  # ConvNeXt: no position-dependent tables, its own forward exports as is
            hidden = self.backbone(pixel_values=x).last_hidden_state
        return pooled_features(hidden, self.num_register_tokens)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))


def pretrained_backbone(directory: str):
    from transformers import AutoConfig, DINOv3ConvNextModel, DINOv3ViTModel

    config = load_or_fail("config", directory, lambda: AutoConfig.from_pretrained(directory))
    model_type = getattr(config, "model_type", "?")
    if model_type not in MODEL_TYPES:
        raise CompileError(f"checkpoint {directory!r}: model_type {model_type!r}, family dinov3 needs one of {', '.join(MODEL_TYPES)}")
    cls = DINOv3ViTModel if model_type == "dinov3_vit" else DINOv3ConvNextModel
    return cls.from_pretrained(directory).eval()


class DinoV3Family(ClassifierFamily):
    name = "dinov3"

    def open(self, stage: StageConfig, config_path: Path) -> Checkpoint:
        """The backbone alone (what fit-head extracts features with)."""
        return open_checkpoint(
            stage,
            config_path,
            random_model=lambda preset: (random_backbone(preset, stage.input_size), Normalization()),
            pretrained_model=pretrained_backbone,
        )

    def classifier(self, ckpt: Checkpoint, stage: StageConfig, config_path: Path):
        backbone, norm = ckpt.model, ckpt.norm
        features = feature_size(backbone)
        notes = []
        if stage.head:
            head_path = resolve_relative(config_path, stage.head)
            head = load_head(head_path, features)
            ckpt.source_sha256 = hash_text(ckpt.source_sha256 + hash_checkpoint(head_path.parent, extra=[head_path]))
        else:
            head = random_head(features, stage.seed)
            ckpt.placeholder = True
            notes.append("random head: fit one with `streetcascade fit-head`")
        module = DinoV3Classifier(backbone, head, stage.input_size, norm)

        def reference(images: np.ndarray) -> np.ndarray:
            # The unmodified Hugging Face forward (dynamic rotary tables) + the head.
            pixel_values = torch.from_numpy(numpy_preprocess(images, norm))
            with torch.no_grad():
                hidden = backbone(pixel_values=pixel_values).last_hidden_state
                return head(pooled_features(hidden, num_prefix_tokens(backbone))).numpy()

        return module, reference, notes

    def write_test_checkpoint(self, directory: Path, seed: int = 0) -> Path:
        import json

        from transformers import DINOv3ViTConfig, DINOv3ViTModel

        torch.manual_seed(seed)
        config = DINOv3ViTConfig(**COMMON, **RANDOM_PRESETS["tiny"], image_size=224)
        DINOv3ViTModel(config).save_pretrained(directory)
        (Path(directory) / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}))
        return Path(directory)


FAMILY = DinoV3Family()
