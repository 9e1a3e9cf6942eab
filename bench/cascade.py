"""The whole cascade on images, end to end (decode + resize + every stage that runs): p50 / p99
per image, each stage's time per image it saw, and where images exited.

    python -m bench.cascade --config configs/default.toml [--images samples/] [--repeat 5]

Uses the engine set `streetcascade compile` built for the config. Decoding is included: the
JPEG bytes are decoded on every run, as the miner does per request.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np


def run(config: str, images: str, repeat: int, out=print) -> dict:
    from streetcascade.cli import engine_dir_from_config
    from streetcascade.runtime import decode_image, load_engine_set
    from streetcascade.runtime.images import IMAGE_SUFFIXES

    engine_dir = engine_dir_from_config(config)
    files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    blobs = [p.read_bytes() for p in files]
    totals, exits, stage_ms = [], Counter(), defaultdict(list)
    with load_engine_set(engine_dir) as es:
        es.cascade.classify(decode_image(blobs[0]))  # warm every stage once
        for _ in range(repeat):
            for blob in blobs:
                t0 = time.perf_counter()
                d = es.cascade.classify(decode_image(blob, draft_size=224))
                totals.append((time.perf_counter() - t0) * 1000.0)
                exits[d.stage] += 1
                for stage, ms in d.timings_ms.items():
                    if stage != "total":
                        stage_ms[stage].append(ms)
    n = len(totals)
    out(f"{len(files)} images x {repeat}: end to end (decode + cascade) p50 {np.percentile(totals, 50):.1f} ms, p99 {np.percentile(totals, 99):.1f} ms")
    for stage, ms in stage_ms.items():
        out(f"  {stage}: ran on {len(ms) / n:.0%} of images, median {np.median(ms):.1f} ms per image; decided {exits[stage] / n:.0%}")
    return {"p50_ms": float(np.percentile(totals, 50)), "p99_ms": float(np.percentile(totals, 99)),
            "exits": {k: v / n for k, v in exits.items()}, "stage_median_ms": {k: float(np.median(v)) for k, v in stage_ms.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.toml")
    ap.add_argument("--images", default="samples")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    run(args.config, args.images, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
