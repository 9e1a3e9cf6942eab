"""Stage kind "vlm": a vision-language model asked one yes/no question ("is there road work in
this image?"), compiled to a one-pass scorer (compile/models/qwen_vl.py, compile/models/smolvlm.py):
no generation loop.

Per image: the family's numpy preparation (runtime/vlm_host.py: runtime/qwen_vl.py,
runtime/smolvlm.py) turns it into the vision graph's inputs; the vision graph gives the image's
features (and, Qwen3-VL, its deepstack features); the prompt compiled into the manifest gets
the image's tokens, and the preparation its rotary positions; one prefill pass of
the language model gives the logits of the answer tokens at the last position and the log-odds
of "yes" against "no" (log of the summed softmax mass of the yes tokens over that of the no
tokens). p(yes) = sigmoid(log-odds / temperature).

As a later stage it is an evidence stage like OCR: `score_given(images, priors)` moves the
earlier probability by the judge's log-odds (streetcascade/evidence.py `LogOddsRule.judge`,
fitted by `streetcascade tune`). Alone, `score` is p(yes). Runs of several images are batched
through the prefill (left-padded) up to the graph's max_batch.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np

from streetcascade.errors import EngineMismatch, InferenceError
from streetcascade.evidence import LogOddsRule
from streetcascade.manifest import StageEntry, VlmEntry
from streetcascade.settings import StageThresholds

from .backends.base import Engine
from .classifier import sigmoid
from .vlm_host import Preparation, assemble, left_pad, preparation_for, visual_index
from .stages import LatencyTracker

ROLES = ("vision", "prefill")


def prefill_feeds(spec: VlmEntry, prep: Preparation, encoded: list[tuple[dict[str, np.ndarray], tuple[int, int]]], pad_id: int) -> dict[str, np.ndarray]:
    """The prefill graph's inputs for a batch of encoded images (the vision graph's outputs and
    the grid of each): the prompt with each image's tokens, left-padded; the rotary positions;
    where each image token takes its feature row; the features, zero-padded to the longest."""
    rows = [assemble(spec.prompt_ids, spec.image_token_id, out["image_embeds"].shape[1]) for out, _ in encoded]
    ids, mask = left_pad(rows, pad_id)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": prep.positions(ids, mask, [grid for _, grid in encoded]),
             "visual_index": visual_index(ids, spec.image_token_id)}
    longest = max(out["image_embeds"].shape[1] for out, _ in encoded)
    for name in prep.features:
        parts = []
        for out, _ in encoded:
            x = out[name]
            pad = longest - x.shape[-2]
            parts.append(np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, pad), (0, 0)]) if pad else x)
        feeds[name] = np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)
    return feeds


class VlmJudge:
    """The compiled chain over two engines: images -> (answer logits, yes log-odds)."""

    def __init__(self, engines: dict[str, Engine], spec: VlmEntry):
        missing = [r for r in ROLES if r not in engines]
        if missing:
            raise EngineMismatch(f"a VLM stage needs graphs {', '.join(missing)}")
        self.engines = engines
        self.spec = spec
        self.prep = preparation_for(spec)
        self.max_batch = engines["prefill"].io.max_batch
        self._local = threading.local()
        if sum(1 for i in spec.prompt_ids if i == spec.image_token_id) != 1:
            raise EngineMismatch("the compiled prompt must hold exactly one image placeholder")
        if not any(spec.answer_yes) or all(spec.answer_yes):
            raise EngineMismatch("the compiled answer tokens need at least one yes and one no")
        # Padding never reaches the last position (left padding) and is masked out: any id will do.
        self.pad_id = int(spec.prompt_ids[0])

    def _slots(self):
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = {role: self.engines[role].slot() for role in ROLES}
        return slots

    def encode(self, rgb: np.ndarray) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
        """One image through the vision graph: its features ([1, tokens, D], and deepstack
        [1, layers, tokens, D]) and its grid."""
        pixels, grid = self.prep.patches(rgb)
        out = self._slots()["vision"].infer(self.prep.vision_feeds(pixels, grid))
        if out["image_embeds"].shape[1] != self.prep.tokens(*grid):
            raise InferenceError(f"the vision graph gave {out['image_embeds'].shape[1]} tokens for a {grid} grid, "
                                 f"{self.prep.tokens(*grid)} expected")
        return out, grid

    def prefill_feeds(self, encoded: list[tuple[dict[str, np.ndarray], tuple[int, int]]]) -> dict[str, np.ndarray]:
        return prefill_feeds(self.spec, self.prep, encoded, self.pad_id)

    def run(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """answer_logits [n, answers] and yes_logodds [n] for every image."""
        logits, logodds = [], []
        for start in range(0, len(images), self.max_batch):
            encoded = [self.encode(rgb) for rgb in images[start : start + self.max_batch]]
            out = self._slots()["prefill"].infer(self.prefill_feeds(encoded))
            logits.append(out["answer_logits"])
            logodds.append(out["yes_logodds"])
        if not logits:
            return {"answer_logits": np.zeros((0, len(self.spec.answer_ids)), np.float32), "yes_logodds": np.zeros(0, np.float32)}
        return {"answer_logits": np.concatenate(logits), "yes_logodds": np.concatenate(logodds)}

    def log_odds(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.run(images)["yes_logodds"].astype(np.float64)


class VlmStage:
    roles = ROLES

    def __init__(self, name: str, judge: VlmJudge, rule: LogOddsRule = LogOddsRule(), thresholds: StageThresholds = StageThresholds(),
                 prior_ms: float = 5000.0):
        self.name = name
        self.judge = judge
        self.rule = rule
        self.thresholds = thresholds
        self.latency = LatencyTracker(prior_ms)
        self.input_size = None  # takes images at any size (resized by its own preparation)

    @classmethod
    def from_manifest(cls, entry: StageEntry, engines: dict[str, Engine], thresholds: StageThresholds) -> "VlmStage":
        if entry.vlm is None:
            raise EngineMismatch(f"stage {entry.name}: a vlm stage needs its prompt and preparation in the manifest (recompile)")
        prior = entry.vlm.expected_ms or 5000.0
        return cls(entry.name, VlmJudge(engines, entry.vlm), entry.combine or LogOddsRule(), thresholds, prior)

    @property
    def expected_ms(self) -> float:
        return self.latency.mean_ms

    def judge_probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """p(yes) per image, the stage's temperature applied (what `tune` fits the rule on)."""
        t0 = time.perf_counter()
        p = sigmoid(self.judge.log_odds(images) / self.thresholds.temperature)
        if len(images):
            self.latency.add((time.perf_counter() - t0) * 1000.0 / len(images))
        return p

    def score_given(self, images: Sequence[np.ndarray], priors: Sequence[float]) -> np.ndarray:
        p_yes = self.judge_probabilities(images)
        return np.array([self.rule.combine_judge(float(prior), float(p)) for prior, p in zip(priors, p_yes)], dtype=np.float64)

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.judge_probabilities(images)

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The judge's log-odds of yes (no temperature), as a classifier stage's logits."""
        return self.judge.log_odds(images)

    def exits(self, probability: float) -> bool:
        return self.thresholds.exits(probability)
