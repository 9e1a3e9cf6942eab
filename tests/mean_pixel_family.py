"""A test-only model family whose classifier is the fake backend's model: logit = (mean pixel -
127.5) / 32. With it, a config with `[target] backend = "fake"` compiles, passes parity and loads
through the same pipeline, registries and loader as a real family and backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from streetcascade.compile.models.base import (
    ExportableGraph,
    ExportableModel,
    GraphDecl,
    ModelFamily,
    hash_text,
)
from streetcascade.runtime.classifier import classifier_io
from torch import nn


class MeanPixel(nn.Module):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.to(torch.float32).flatten(1).mean(dim=1) - 127.5) / 32.0


class MeanPixelFamily(ModelFamily):
    name = "mean-pixel"
    kind = "classifier"

    def graphs(self, stage):
        return [GraphDecl("classifier", classifier_io(stage.input_size, stage.max_batch), preprocessing="uint8 NHWC, mean over all pixels")]

    def load(self, stage, config_path: Path) -> ExportableModel:
        def reference(images: np.ndarray) -> np.ndarray:
            return (images.reshape(len(images), -1).astype(np.float64).mean(axis=1) - 127.5) / 32.0

        return ExportableModel([ExportableGraph(self.graphs(stage)[0], MeanPixel(), reference)], hash_text(stage.source), True)

    def write_test_checkpoint(self, directory: Path, seed: int = 0) -> Path:
        Path(directory).mkdir(parents=True, exist_ok=True)
        return Path(directory)


FAMILY = MeanPixelFamily()
