"""Which ONNX Runtime settings pay off for a stage-1 graph on this CPU? Measured side by side
in one run on the same exported graph and input (batch 1 by default):

  threads     intra-op threads 1 .. cores
  spin        worker threads spinning between ops (latency) or sleeping (shares the CPU)
  level       offline optimisation level: basic / extended / all (all adds NCHWc layouts)
  fusions     onnxruntime.transformers' ViT fusions (SkipLayerNorm, BiasGelu) before the optimiser
  arena       CPU memory arena + memory pattern on/off

    python -m bench.ort_settings --model vits16 --runs 40

A study of ONNX Runtime's own session settings, so it builds its sessions itself (starting from
the backend's options, then changing one setting at a time); the product creates sessions only
in runtime/backends/onnxruntime.py.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from streetcascade.timing import interleaved, summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vits16", choices=["vits16", "vitb16", "vit-b16-cls", "tiny"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=40)
    a = parser.parse_args(argv)

    import onnxruntime as ort
    from onnxruntime.transformers import optimizer

    from streetcascade.compile.export import export_graph
    from streetcascade.compile.models import get_family
    from streetcascade.config import StageConfig
    from streetcascade.machine import physical_cores
    from streetcascade.runtime.backends.onnxruntime import OrtOptions, session_options

    from .stage1 import MODELS

    family, source, title = MODELS[a.model]
    with tempfile.TemporaryDirectory(prefix="sc-ortset-") as tmp:
        work = Path(tmp)
        graph = get_family(family).load(StageConfig(name="s", family=family, source=source), work / "x.toml").graphs[0]
        raw = export_graph(graph, work / "raw.onnx")
        module = graph.module
        hidden = module.backbone.config.hidden_size if hasattr(module, "backbone") else module.model.config.hidden_size
        heads = module.backbone.config.num_attention_heads if hasattr(module, "backbone") else module.model.config.num_attention_heads
        fused = optimizer.optimize_model(str(raw), model_type="vit", num_heads=heads, hidden_size=hidden, opt_level=0)
        fused.save_model_to_file(str(work / "fused.onnx"))

        def offline(src: Path, level, name: str) -> Path:
            so = session_options(OrtOptions(optimize=True))
            so.graph_optimization_level = level
            so.optimized_model_filepath = str(work / name)
            so.log_severity_level = 3
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
            return work / name

        L = ort.GraphOptimizationLevel
        graphs = {
            "basic": offline(raw, L.ORT_ENABLE_BASIC, "basic.onnx"),
            "extended": offline(raw, L.ORT_ENABLE_EXTENDED, "extended.onnx"),
            "all": offline(raw, L.ORT_ENABLE_ALL, "all.onnx"),
            "fusions+all": offline(work / "fused.onnx", L.ORT_ENABLE_ALL, "fused_all.onnx"),
        }
        cores = physical_cores()

        def session(graph: str, threads: int = 0, spin: bool = True, arena: bool = True):
            so = session_options(OrtOptions(intra_op_threads=threads, spin_wait=spin))
            so.enable_cpu_mem_arena = arena
            so.enable_mem_pattern = arena
            return ort.InferenceSession(str(graphs[graph]), so, providers=["CPUExecutionProvider"])

        variants = {f"level={g}": session(g) for g in graphs}
        variants["all, spin off"] = session("all", spin=False)
        variants["all, arena off"] = session("all", arena=False)
        for t in sorted({1, cores}):
            variants[f"all, {t} thread(s)"] = session("all", threads=t)
        x = np.random.default_rng(0).integers(0, 256, (a.batch, 224, 224, 3), dtype=np.uint8)
        ref = variants["level=all"].run(None, {"pixels": x})[0]
        times = interleaved({k: (lambda s=s: s.run(None, {"pixels": x})) for k, s in variants.items()}, a.runs, warmup=3, rounds=4)
        base = summary(times["level=basic"])[0]
        print(f"# {title}, batch {a.batch}, {a.runs} runs each, {cores} core(s); ratios vs level=basic")
        for name, ms in times.items():
            med, p99 = summary(ms)
            diff = float(np.abs(variants[name].run(None, {"pixels": x})[0] - ref).max())
            print(f"{name:<22} median {med:8.2f} ms  p99 {p99:8.2f} ms  {base / med:5.2f}x  max|dlogit| vs all {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
