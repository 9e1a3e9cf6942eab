"""Latency regression: the cascade's per-image overhead on top of the raw engine call,
both measured in this run on the same engine and image (never absolute times)."""

import time

import numpy as np

from streetcascade.timing import interleaved
from streetcascade.runtime import decode_image, load_engine_set
from streetcascade.runtime.images import resize_to

ATTEMPTS = 5  # a regression fails every attempt; a noisy neighbour on a 2-vCPU box rarely spoils five


def test_cascade_overhead_stays_small(tiny_engine_dir, sample_bytes):
    """The baseline does the work the cascade cannot avoid (resize + one engine call); what the
    cascade adds on top (stacking, the sigmoid, thresholds, bookkeeping, timings) must stay small.
    Both include the resize, so a slow moment in PIL hits both alike."""
    rgb = decode_image(sample_bytes["street-barrier.jpg"])
    seen = []
    with load_engine_set(tiny_engine_dir) as es, es.engines[0].slot() as slot:
        for _ in range(ATTEMPTS):
            times = interleaved({"raw": lambda: slot.infer({"pixels": resize_to(rgb, 224)[None]}), "full": lambda: es.cascade.classify(rgb)},
                                runs=60, warmup=5, rounds=6)
            # The fastest runs: the least disturbed by whatever else shares the CPU (CI, other tests).
            raw_ms, full_ms = float(np.percentile(times["raw"], 10)), float(np.percentile(times["full"], 10))
            seen.append(f"cascade {full_ms:.2f} ms vs resize + engine {raw_ms:.2f} ms")
            if full_ms <= raw_ms * 1.3 + 0.5:
                return
            time.sleep(1.0)  # let whatever disturbed this attempt pass
    raise AssertionError(f"over baseline * 1.3 + 0.5 ms in all {ATTEMPTS} attempts: {'; '.join(seen)}")
