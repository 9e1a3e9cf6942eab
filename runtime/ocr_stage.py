"""Stage kind "ocr": read the text in an image (PP-OCR detector + recognizer graphs, or
Florence-2's `<OCR>` over its five graphs: runtime/florence2.py), look for
roadwork phrases in it (runtime/evidence.py), and move the earlier stage's probability by what
was found (streetcascade/evidence.py's LogOddsRule). Images without readable text cost one
detector run and keep the earlier answer (weight `no_text`, 0 by default).

As a later stage it is asked through `score_given(images, priors)` and returns, with the
probabilities, the text it read (the Decision carries it). Alone, `score` starts from 0.5.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np

from streetcascade.errors import EngineMismatch
from streetcascade.evidence import LogOddsRule, Vocabulary
from streetcascade.manifest import StageEntry
from streetcascade.settings import StageThresholds

from .backends.base import Engine
from .evidence import find_phrases
from .ppocr import DetSettings, charset_from_metadata, ctc_decode, cut_out, detector_input, recognizer_input, text_boxes
from .stages import LatencyTracker


class PpOcrReader:
    """PP-OCR: detect text boxes, recognise each (runtime/ppocr.py around the two graphs)."""

    roles = ("detector", "recognizer")

    def __init__(self, detector: Engine, recognizer: Engine, det: DetSettings = DetSettings(), min_confidence: float = 0.5, max_boxes: int = 24):
        self.detector = detector
        self.recognizer = recognizer
        self.det = det
        self.min_confidence = min_confidence
        self.max_boxes = max_boxes
        try:
            self.charset = charset_from_metadata(recognizer.metadata())
        except Exception as exc:
            raise EngineMismatch(str(exc)) from None
        self.max_width = int(recognizer.io.axis_sizes.get("width", 960))
        self._local = threading.local()

    def _slots(self):
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = (self.detector.slot(), self.recognizer.slot())
        return slots

    def read(self, rgb: np.ndarray) -> list[tuple[str, float]]:
        det_slot, rec_slot = self._slots()
        feed = detector_input(rgb, self.det.det_side)
        prob = next(iter(det_slot.infer({self.detector.io.inputs[0].name: feed}).values()))[0, 0]
        boxes = text_boxes(prob, rgb.shape[:2], self.det)
        if not boxes:
            return []
        if len(boxes) > self.max_boxes:  # keep the largest: signs, not texture
            boxes = sorted(boxes, key=lambda b: -float(np.ptp(b[:, 0]) * np.ptp(b[:, 1])))[: self.max_boxes]
        crops = [cut_out(rgb, b) for b in boxes]
        lines: list[tuple[str, float]] = []
        name_in = self.recognizer.io.inputs[0].name
        step = self.recognizer.io.max_batch
        for start in range(0, len(crops), step):
            batch = recognizer_input(crops[start : start + step], self.max_width)
            probs = next(iter(rec_slot.infer({name_in: batch}).values()))
            lines += ctc_decode(probs, self.charset)
        return [(t.strip(), c) for t, c in lines if t.strip() and c >= self.min_confidence]


class OcrStage:
    """`reader` is a PpOcrReader (roles detector + recognizer) or a Florence2Reader (roles vision,
    embed, encoder, decoder, decoder_with_past), chosen by the graphs the stage has."""

    roles: tuple[str, ...] = ()  # checked in from_manifest: either reader's set

    def __init__(self, name: str, reader, vocabulary: Vocabulary = Vocabulary(), rule: LogOddsRule = LogOddsRule(),
                 thresholds: StageThresholds = StageThresholds(), prior_ms: float = 1500.0):
        self.name = name
        self.reader = reader
        self.vocabulary = vocabulary
        self.rule = rule
        self.thresholds = thresholds
        self.latency = LatencyTracker(prior_ms)

    @classmethod
    def from_manifest(cls, entry: StageEntry, engines: dict[str, Engine], thresholds: StageThresholds) -> "OcrStage":
        if set(PpOcrReader.roles) <= set(engines):
            reader = PpOcrReader(engines["detector"], engines["recognizer"])
        elif "vision" in engines:
            from .florence2 import Florence2Reader

            reader = Florence2Reader(engines)
        else:
            raise EngineMismatch(f"stage {entry.name}: an ocr stage needs detector + recognizer (PP-OCR) or vision, embed, encoder, "
                                 f"decoder, decoder_with_past (Florence-2) graphs; it has {sorted(engines)}")
        return cls(entry.name, reader, entry.evidence or Vocabulary(), entry.combine or LogOddsRule(), thresholds)

    @property
    def expected_ms(self) -> float:
        return self.latency.mean_ms

    def read(self, rgb: np.ndarray) -> list[tuple[str, float]]:
        """Text lines in reading order with their confidence (low-confidence lines dropped)."""
        return self.reader.read(rgb)

    def score_given(self, images: Sequence[np.ndarray], priors: Sequence[float]) -> tuple[np.ndarray, list[str]]:
        t0 = time.perf_counter()
        probs, texts = [], []
        for rgb, prior in zip(images, priors):
            text = " | ".join(t for t, _ in self.read(rgb))
            hit = bool(find_phrases(self.vocabulary, text)) if text else False
            probs.append(self.rule.combine(float(prior), self.vocabulary.has_text(text), hit))
            texts.append(text)
        if images:
            self.latency.add((time.perf_counter() - t0) * 1000.0 / len(images))
        return np.asarray(probs, dtype=np.float64), texts

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.score_given(images, [0.5] * len(images))[0]

    def exits(self, probability: float) -> bool:
        return self.thresholds.exits(probability)
