"""The cascade through Ray Serve vs the local runtime, same engine set, same images, same run:
per-request p50 / p99 and throughput with N concurrent clients (threads calling
`cascade.classify`, as the miner's inference threads do).

    python -m bench.ray_serve --config configs/default.toml [--clients 1,4] [--passes 2] [--rounds 3]
    python -m bench.ray_serve --config configs/default.toml --exit-at-stage1   # stage 1 alone: every image exits there

Variants, timed in interleaved rounds (local, ray-1, ray-2, local, ...):
- local:  the engine set in this process, `slots` = the most clients, engine threads = one per core;
- ray-1:  a Ray Serve application, stage 1 one replica (num_cpus = every core) batched with serve.batch;
- ray-2:  stage 1 two replicas (num_cpus = half the cores each), both batched.
The OCR stage is one unbatched replica (num_cpus = every core) in both applications. The Ray
cluster is started in this process with logical CPUs enough for both applications at once (Ray's
num_cpus is a reservation, not a core count): on a small machine the replicas share the same cores.
Every variant must reach the same decisions (checked and printed). Spinning ONNX Runtime threads
are off (spin_wait = false) in every variant: they would steal the cores the other processes need.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def block(classify, images: list[np.ndarray], clients: int, passes: int) -> tuple[np.ndarray, float, list]:
    """`clients` threads, each classifying every image `passes` times (starting at different images);
    returns per-request milliseconds, wall seconds and the decisions of client 0's first pass."""
    start = threading.Barrier(clients)
    first: list = []

    def client(k: int) -> list[float]:
        order = images[k % len(images):] + images[: k % len(images)]
        ms = []
        start.wait()
        for p in range(passes):
            for rgb in order:
                t0 = time.perf_counter()
                d = classify(rgb)
                ms.append((time.perf_counter() - t0) * 1000.0)
                if k == 0 and p == 0:
                    first.append(d)
        return ms

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        parts = list(pool.map(client, range(clients)))
    return np.concatenate([np.asarray(p) for p in parts]), time.perf_counter() - t0, first


def run(engine_dir: Path, images_dir: str, clients_list: list[int], passes: int, rounds: int, exit_at_stage1: bool, out=print) -> dict:
    import ray
    from ray import serve

    from streetcascade.manifest import read_manifest
    from streetcascade.runtime import decode_image, load_engine_set
    from streetcascade.runtime.images import IMAGE_SUFFIXES
    from streetcascade.runtime.ray_app import deploy
    from streetcascade.runtime.ray_plan import RayConfig, RayStageConfig
    from streetcascade.runtime.ray_stage import connect_cascade
    from streetcascade.settings import RuntimeConfig, StageThresholds

    cores = os.cpu_count() or 2
    manifest = read_manifest(engine_dir)
    first, *later = [s.name for s in manifest.stages]
    thresholds = {first: StageThresholds(exit_low=0.5, exit_high=0.5)} if exit_at_stage1 else None
    files = sorted(p for p in Path(images_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    images = [decode_image(p.read_bytes(), draft_size=manifest.stages[0].input_size) for p in files]
    runtime = RuntimeConfig(slots=max(clients_list), intra_op_threads=0, spin_wait=False)
    apps = {
        "ray-1": RayConfig(app_name="bench-r1", stages={first: RayStageConfig(replicas=1, num_cpus=cores, max_ongoing_requests=32),
                                                        **{s: RayStageConfig(num_cpus=cores) for s in later}}),
        "ray-2": RayConfig(app_name="bench-r2", stages={first: RayStageConfig(replicas=2, num_cpus=cores / 2, max_ongoing_requests=32),
                                                        **{s: RayStageConfig(num_cpus=cores) for s in later}}),
    }
    logical = sum(s.replicas * s.num_cpus for cfg in apps.values() for s in cfg.stages.values())
    out(f"engine set {engine_dir} ({manifest.target.name}): stages {[s.name for s in manifest.stages]}; {len(images)} images; "
        f"{'every image exits at stage 1' if exit_at_stage1 else 'exit bands as compiled'}; {cores} cores, Ray with {logical:g} logical CPUs")
    t0 = time.perf_counter()
    ray.init(num_cpus=int(np.ceil(logical)), include_dashboard=False, object_store_memory=200 * 2**20, logging_level=logging.WARNING,
             log_to_driver=False, configure_logging=False)
    out(f"Ray cluster started in {time.perf_counter() - t0:.1f} s")
    results: dict = {}
    cascades, closers = {}, []
    try:
        serve.start(proxy_location="Disabled")
        local = load_engine_set(engine_dir, runtime, thresholds)
        closers.append(local.close)
        cascades["local"] = local.cascade
        for name, cfg in apps.items():
            t0 = time.perf_counter()
            deploy(engine_dir, cfg, runtime, "auto", thresholds)
            remote = connect_cascade("auto", cfg, runtime)
            closers.append(remote.close)
            cascades[name] = remote.cascade
            out(f"{name}: application {cfg.app_name!r} deployed in {time.perf_counter() - t0:.1f} s")
        decisions = {name: [c.classify(rgb) for rgb in images] for name, c in cascades.items()}  # warm-up + parity
        ref = decisions["local"]
        for name, ds in decisions.items():
            worst = max(abs(a.probability - b.probability) for a, b in zip(ds, ref))
            stages_same = all(a.stage == b.stage and a.text == b.text for a, b in zip(ds, ref))
            out(f"{name}: same deciding stage and text as local on every image: {stages_same}; max |p - p_local| {worst:.2e}; "
                f"decided by {dict(Counter(d.stage for d in ds))}")
        samples: dict = {(n, c): [] for n in cascades for c in clients_list}
        walls: dict = {(n, c): [] for n in cascades for c in clients_list}
        for r in range(rounds):
            for clients in clients_list:
                for name, cascade in cascades.items():
                    ms, wall, _ = block(cascade.classify, images, clients, passes)
                    samples[name, clients].append(ms)
                    walls[name, clients].append((len(ms), wall))
            out(f"round {r + 1}/{rounds} done")
        for clients in clients_list:
            base = None
            for name in cascades:
                ms = np.concatenate(samples[name, clients])
                n = sum(k for k, _ in walls[name, clients])
                rps = n / sum(w for _, w in walls[name, clients])
                row = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "throughput_rps": rps, "requests": n}
                base = base or row
                row["p50_vs_local"] = row["p50_ms"] / base["p50_ms"]
                row["throughput_vs_local"] = rps / base["throughput_rps"]
                results[f"{name}@{clients}"] = row
        for stage_name in [first]:
            for name, cfg in apps.items():
                stats = serve.get_deployment_handle(f"stage-{stage_name}", cfg.app_name).stats.remote().result(timeout_s=30)
                out(f"{name}: a stage-1 replica's batches: {stats['batches']} from {stats['calls']} calls, largest {stats['largest_batch']}")
    finally:
        for close in reversed(closers):
            close()
        ray.shutdown()
    return results


def table(results: dict, markdown: bool) -> str:
    rows = [(k.split("@")[0], int(k.split("@")[1]), v) for k, v in results.items()]
    head = ["variant", "clients", "p50 ms", "p99 ms", "req/s", "p50 vs local", "req/s vs local"]
    lines = []
    for name, clients, v in sorted(rows, key=lambda r: (r[1], r[0] != "local", r[0])):
        lines.append([name, str(clients), f"{v['p50_ms']:.1f}", f"{v['p99_ms']:.1f}", f"{v['throughput_rps']:.2f}",
                      f"{v['p50_vs_local']:.2f}x", f"{v['throughput_vs_local']:.2f}x"])
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in lines])
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in [head, *lines])


def main(argv: list[str] | None = None) -> int:
    from streetcascade.cli import engine_dir_from_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.toml", help="cascade config whose compiled engine set is used")
    ap.add_argument("--engines", default="", help="an engine-set folder instead of --config")
    ap.add_argument("--images", default="samples")
    ap.add_argument("--clients", default="1,4", help="concurrent clients, comma separated")
    ap.add_argument("--passes", type=int, default=2, help="passes over the images per client per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--exit-at-stage1", action="store_true", help="collapse stage 1's band: every image is decided there")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    engine_dir = engine_dir_from_args(args)
    results = run(engine_dir, args.images, [int(c) for c in args.clients.split(",")], args.passes, args.rounds, args.exit_at_stage1)
    print(table(results, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
