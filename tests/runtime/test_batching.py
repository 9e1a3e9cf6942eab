"""Stage-1 micro-batching: concurrent requests within the window share one engine call, and
each gets exactly the scores it would have got alone."""

import threading

import numpy as np
import pytest
from streetcascade.runtime import Cascade, ClassifierStage
from streetcascade.runtime.backends.fake import FakeEngine
from streetcascade.runtime.batching import BatchingStage

from streetcascade.errors import InferenceError


def images(n):
    return [np.full((224, 224, 3), 10 + 30 * i, np.uint8) for i in range(n)]


def test_concurrent_requests_share_a_batch():
    engine = FakeEngine(latency_ms=5)
    alone = ClassifierStage("stage1", FakeEngine(), 224)
    stage = BatchingStage(ClassifierStage("stage1", engine, 224), window_ms=100, max_batch=8, slots=4)
    imgs = images(4)
    want = [float(alone.score([img])[0]) for img in imgs]
    got = [None] * 4
    barrier = threading.Barrier(4)

    def run(i):
        barrier.wait()
        got[i] = float(stage.score([imgs[i]])[0])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got == pytest.approx(want)
    assert stage.batched_images == 4 and stage.batches < 4 and engine.calls == stage.batches


def test_full_batch_runs_without_waiting_out_the_window():
    stage = BatchingStage(ClassifierStage("stage1", FakeEngine(), 224), window_ms=10_000, max_batch=2, slots=2)
    out = []
    threads = [threading.Thread(target=lambda i=i: out.append(stage.score([images(2)[i]]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)  # far below the 10 s window: the batch filled up
    assert len(out) == 2 and stage.batches == 1


def test_one_slot_never_waits_and_errors_reach_every_member():
    stage = BatchingStage(ClassifierStage("stage1", FakeEngine(), 224), window_ms=10_000, max_batch=8, slots=1)
    assert not stage.enabled and stage.score(images(1)).shape == (1,)
    failing = BatchingStage(ClassifierStage("stage1", FakeEngine(fail_with=InferenceError("boom")), 224), window_ms=50, max_batch=8, slots=2)
    errors = []

    def run():
        try:
            failing.score(images(1))
        except InferenceError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(errors) == 2


def test_cascade_with_a_batching_first_stage_falls_back_like_any_stage():
    stage = BatchingStage(ClassifierStage("stage1", FakeEngine(), 224), window_ms=5, max_batch=8, slots=2)
    d = Cascade([stage], safety_margin_ms=0).classify(images(1)[0])
    assert d.stage == "stage1" and 0.0 <= d.probability <= 1.0


def test_load_engine_set_wraps_stage_one_when_asked(tiny_engine_dir):
    from streetcascade.runtime import load_engine_set
    from streetcascade.settings import RuntimeConfig

    with load_engine_set(tiny_engine_dir, RuntimeConfig(batch_window_ms=5, slots=2)) as es:
        first = es.cascade.stages[0]
        assert isinstance(first, BatchingStage) and first.enabled and first.max_batch == 4
        assert 0.0 <= es.cascade.classify(images(1)[0]).probability <= 1.0
    with load_engine_set(tiny_engine_dir) as es:
        assert not isinstance(es.cascade.stages[0], BatchingStage)
