"""fit-head: fit a DINOv3 stage's binary head on frozen backbone features from a labelled
image folder (roadwork/ + no_roadwork/, or a labels CSV): logistic regression on the
CLS + mean-patch features. Small data is fine: the backbone does the heavy lifting."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from streetcascade.config import load_config
from streetcascade.errors import BadInput, ConfigError
from streetcascade.progress import QUIET, Progress
from streetcascade.runtime.images import resize_to

from .models.dinov3 import FAMILY as DINOV3, DinoV3Classifier, feature_size
from .models.head import fit_logistic_head, random_head, save_head

log = logging.getLogger(__name__)


def extract_features(classifier: DinoV3Classifier, images: list[np.ndarray], batch: int = 16, progress: Progress = QUIET) -> np.ndarray:
    out = []
    starts = range(0, len(images), batch)
    with torch.inference_mode():
        for i in progress.track(starts, f"backbone features of {len(images)} images (batches of {batch})"):
            x = torch.from_numpy(np.stack(images[i : i + batch]))
            out.append(classifier.features(x).double().numpy())
    return np.concatenate(out)


def fit_head_command(config_path: str, stage_name: str, data: str, out: str, labels_csv: str | None = None, batch: int = 16, l2: float = 1.0,
                     progress: Progress = QUIET) -> dict:
    from streetcascade.calibration.datasets import iter_decoded, iter_image_folder

    config = load_config(config_path)
    stages = [s for s in config.stages if s.family == "dinov3" and (not stage_name or s.name == stage_name)]
    if not stages:
        raise ConfigError(f"{config_path}: no dinov3 stage{' named ' + repr(stage_name) if stage_name else ''} to fit a head for")
    stage = stages[0]
    ckpt = DINOV3.open(stage, Path(config_path))
    if ckpt.placeholder:
        log.warning("fitting a head on a PLACEHOLDER (random) backbone: fine for testing, useless for mining")
    backbone = ckpt.model
    classifier = DinoV3Classifier(backbone, random_head(feature_size(backbone), 0), stage.input_size, ckpt.norm).eval()
    images, labels, bad = [], [], []  # bad: unreadable files and undecodable pixels, reported as skipped
    samples = iter_decoded(iter_image_folder(data, labels_csv=labels_csv, bad=bad), bad=bad)
    for sample, rgb in progress.track(samples, f"reading {data}"):
        images.append(resize_to(rgb, stage.input_size))
        labels.append(sample.label)
    if not images:
        raise BadInput(f"{data}: no labelled images found (expected roadwork/ and no_roadwork/ subfolders or a labels CSV)")
    features = extract_features(classifier, images, batch, progress)
    head, stats = fit_logistic_head(features, np.asarray(labels), l2=l2)
    save_head(head, out, {"backbone_source": stage.source, "n_images": str(stats["n"]), "train_accuracy": f"{stats['train_accuracy']:.4f}"})
    stats["skipped"] = len(bad)
    print(f"head written to {out}: {stats['n']} images ({stats['positives']} roadwork), train accuracy {stats['train_accuracy']:.3f}, {stats['skipped']} skipped")
    return stats
