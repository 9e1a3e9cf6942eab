import math
import threading

import numpy as np
import pytest
from streetcascade.runtime import Cascade, ClassifierStage, sigmoid
from streetcascade.runtime.backends.fake import FakeEngine

from streetcascade.errors import BadInput, InferenceError
from streetcascade.settings import StageThresholds

BRIGHT = np.full((224, 224, 3), 250, dtype=np.uint8)  # fake logit (250-127.5)/32 = 3.8 -> p 0.98
DARK = np.full((224, 224, 3), 5, dtype=np.uint8)  # p 0.02
GREY = np.full((224, 224, 3), 130, dtype=np.uint8)  # p ~0.52: uncertain


class ConstantStage:
    """A later stage (OCR/VLM stand-in) answering a fixed probability."""

    def __init__(self, name, p, expected_ms=1.0, fail=False):
        self.name, self.p, self._ms, self.fail, self.seen = name, p, expected_ms, fail, 0

    @property
    def expected_ms(self):
        return self._ms

    def score(self, images):
        self.seen += len(images)
        if self.fail:
            raise RuntimeError("stage exploded")
        return np.full(len(images), self.p)

    def exits(self, p):
        return True


def stage1(**kw):
    return ClassifierStage("stage1", FakeEngine(**{k: v for k, v in kw.items() if k in ("latency_ms", "emit_nan", "fail_with")}), 224,
                           StageThresholds(**{k: v for k, v in kw.items() if k in ("exit_low", "exit_high", "temperature")}))


def test_confident_images_exit_at_stage1():
    later = ConstantStage("vlm", 0.3)
    cascade = Cascade([stage1(), later])
    d_bright, d_dark = cascade.classify_batch([BRIGHT, DARK])
    assert d_bright.stage == d_dark.stage == "stage1"
    assert d_bright.probability == pytest.approx(float(sigmoid((250 - 127.5) / 32)))
    assert d_bright.label == 1 and d_dark.label == 0
    assert later.seen == 0


def test_uncertain_image_goes_to_next_stage():
    later = ConstantStage("vlm", 0.9)
    d = Cascade([stage1(), later]).classify(GREY)
    assert d.stage == "vlm" and d.probability == 0.9 and not d.fallback
    assert set(d.timings_ms) == {"stage1", "vlm", "total"}


def test_last_stage_answers_even_when_uncertain():
    d = Cascade([stage1()]).classify(GREY)
    assert d.stage == "stage1" and 0.4 < d.probability < 0.6


def test_deadline_skips_slow_later_stage_and_counts_fallback():
    later = ConstantStage("vlm", 0.9, expected_ms=10_000)
    cascade = Cascade([stage1(), later])
    d = cascade.classify(GREY, deadline_ms=500)
    assert d.stage == "stage1" and d.fallback and later.seen == 0
    assert cascade.counters["fallbacks"] == 1


def test_failing_later_stage_keeps_earlier_answer():
    cascade = Cascade([stage1(), ConstantStage("vlm", 0.9, fail=True)])
    d = cascade.classify(GREY)
    assert d.stage == "stage1" and d.fallback
    assert cascade.counters["stage_errors"] == 1


def test_nan_from_only_stage_is_an_error_never_an_answer():
    with pytest.raises(InferenceError, match="non-finite"):
        Cascade([stage1(emit_nan=True)]).classify(GREY)


def test_nan_from_stage1_escalates_to_next_stage():
    d = Cascade([stage1(emit_nan=True), ConstantStage("vlm", 0.2)]).classify(BRIGHT)
    assert d.stage == "vlm" and d.probability == 0.2 and math.isfinite(d.probability)


def test_stage1_backend_failure_is_inference_error():
    with pytest.raises(InferenceError, match="stage1 failed"):
        Cascade([stage1(fail_with=RuntimeError("device lost"))]).classify(GREY)


def test_thresholds_and_temperature_from_arguments():
    wide = Cascade([ClassifierStage("s", FakeEngine(), 224, StageThresholds(exit_low=0.01, exit_high=0.99)), ConstantStage("vlm", 0.5)])
    assert wide.classify(BRIGHT).stage == "vlm"  # 0.98 is inside the band now
    hot = ClassifierStage("s", FakeEngine(), 224, StageThresholds(temperature=4.0))
    assert hot.score([BRIGHT])[0] == pytest.approx(float(sigmoid((250 - 127.5) / 32 / 4)))


def test_images_of_any_size_are_resized_and_batched():
    engine = FakeEngine(max_batch=2)
    stage = ClassifierStage("s", engine, 224)
    probs = stage.score([np.full((10, 30, 3), 250, np.uint8), np.full((500, 400, 3), 5, np.uint8), BRIGHT])
    assert probs.shape == (3,) and probs[0] > 0.9 and probs[1] < 0.1
    assert engine.calls == 2  # batches of 2 + 1


def test_concurrent_classify_from_threads():
    cascade = Cascade([stage1()])
    results, errors = [], []

    def work(img):
        try:
            for _ in range(20):
                results.append(cascade.classify(img).label)
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(img,)) for img in (BRIGHT, DARK, BRIGHT, DARK)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80 and sum(results) == 40
    assert cascade.counters["decisions"] == 80


def test_empty_cascade_rejected():
    with pytest.raises(BadInput):
        Cascade([])
