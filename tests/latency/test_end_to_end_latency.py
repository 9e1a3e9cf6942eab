"""End to end: a request's cascade (`Cascade.classify` on a decoded image) against the work it
cannot avoid, timed side by side in this run: the same stages called directly, one after the
other, on the same image. What the cascade adds (deadline arithmetic, thresholds, bookkeeping,
timings, the Decision) must stay small; a cascade doing twice its stages' work fails. The
classifier stage's own additions (stacking, the sigmoid) are held to resize + the raw engine
call, as tests/runtime/test_latency_regression.py did before this suite. Engines are timed on
one thread each (compile/latency.py says why)."""

from __future__ import annotations


import numpy as np
import pytest
from support import SAMPLES, twice_as_long

from streetcascade.compile.latency import TIMING_RUNTIME, Tolerance, check, measure
from streetcascade.runtime import decode_image, load_engine_set
from streetcascade.runtime.images import resize_to

pytestmark = pytest.mark.latency

# The cascade may cost up to 1.3x its stages at the median (it adds microseconds to calls of a
# millisecond or more), 2.5x at p99 (the slowest of a few dozen calls on a shared box).
OVERHEAD = Tolerance(p50=1.3, p99=2.5)


def stage_calls(cascade, rgb):
    """The stages the cascade ran for `rgb`, called directly as the cascade calls them."""
    ran = [s for s in cascade.stages if s.name in cascade.classify(rgb).timings_ms]

    def run():
        p = None
        for i, stage in enumerate(ran):
            given = getattr(stage, "score_given", None)
            p = given([rgb], [p])[0][0] if i and given is not None else stage.score([rgb])[0]
        return p

    return run, [s.name for s in ran]


def e2e_verdict(cascade, rgb, label, runs, cascade_call=None):
    reference, ran = stage_calls(cascade, rgb)
    call = cascade_call or (lambda: cascade.classify(rgb))

    def once():
        r = measure(call, reference, "stage calls", runs)
        return r.ratio_p50, r.ratio_p99

    return check(f"{label}: cascade vs its stages {ran}", once, (1.0, 1.0), OVERHEAD), ran


@pytest.fixture(scope="module")
def street_photo():
    return decode_image((SAMPLES / "street-barrier.jpg").read_bytes())


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_stage1_cascade_adds_little(stage1_sets, street_photo, target):
    if target not in stage1_sets:
        pytest.skip(f"{target} is not installed: no engine set for it")
    with load_engine_set(stage1_sets[target].engines, TIMING_RUNTIME) as es:
        verdict, ran = e2e_verdict(es.cascade, street_photo, f"stage1-{target}", runs=60)
    assert ran == ["stage1"]
    assert verdict.passed, verdict.describe()


def test_two_stage_cascade_adds_little(cascade_set, challenge):
    """Stage 1 is never sure here, so every image also runs PP-OCR (detector + recognizer)."""
    with load_engine_set(cascade_set.engines, TIMING_RUNTIME) as es:
        verdict, ran = e2e_verdict(es.cascade, challenge, "stage1+ocr", runs=15)
    assert ran == ["stage1", "ocr"]
    assert verdict.passed, verdict.describe()


def test_classifier_stage_adds_little_to_resize_and_engine(stage1_sets, street_photo):
    """The baseline does what the stage cannot avoid (resize + one engine call, both include the
    resize so a slow moment in PIL hits both alike); the stage's own additions must stay small."""
    with load_engine_set(stage1_sets["onnxruntime"].engines, TIMING_RUNTIME) as es, es.engines[0].slot() as slot:
        stage = es.cascade.stages[0]

        def once():
            r = measure(lambda: stage.score([street_photo]), lambda: slot.infer({"pixels": resize_to(street_photo, 224)[None]}), "resize + engine", 60)
            return r.ratio_p50, r.ratio_p99

        verdict = check("stage1: stage.score vs resize + engine", once, (1.0, 1.0), OVERHEAD)
    assert verdict.passed, verdict.describe()


class TwiceAsSlowStage:
    """A deliberate regression inside the request path: the stage's work, then as much busy
    work again (what a cascade that ran a stage twice would cost)."""

    def __init__(self, stage):
        self.stage = stage
        self.name = stage.name

    def __getattr__(self, name):
        return getattr(self.stage, name)

    def score(self, images):
        return twice_as_long(lambda: self.stage.score(images))


def test_a_2x_slower_cascade_fails(stage1_sets, street_photo):
    with load_engine_set(stage1_sets["onnxruntime"].engines, TIMING_RUNTIME) as es:
        reference_stages = list(es.cascade.stages)
        es.cascade.stages[0] = TwiceAsSlowStage(reference_stages[0])
        reference = type(es.cascade)(reference_stages, es.cascade.safety_margin_ms)  # what the test measures against
        verdict, _ = e2e_verdict(reference, street_photo, "stage1-onnxruntime, slowed", runs=60,
                                 cascade_call=lambda: es.cascade.classify(street_photo))
    assert not verdict.passed, f"a cascade twice as slow passed: {verdict.describe()}"
    assert all(p50 > OVERHEAD.p50 for p50, _ in verdict.attempts), verdict.describe()
    assert np.median([p50 for p50, _ in verdict.attempts]) > 1.6, verdict.describe()
