"""Stage 1 on a GPU, end to end from a uint8 host image to a host probability, side by side in
one run: PyTorch eager FP16, `torch.compile` (max-autotune where it finishes in its time limit,
else the default mode, said in the table), and every GPU target this machine can build
(AOTInductor; TensorRT and ONNX Runtime CUDA when installed), through the runtime's backends.

    python -m bench.gpu [--models vits16,vitl16] [--batch 1,8] [--runs 200] [--json out.json]
    python -m bench.gpu --device cpu --models tiny --batch 1 --runs 5     # plumbing check, no GPU

Random weights of the real shapes (DINOv3 ViT-S/16 and ViT-L/16 at 224, + a head). Each
variant is timed in interleaved rounds; every call includes the host->device copy, the model,
the device->host copy and the sigmoid. Prints median / p99 ms and each variant's speed-up over
eager and over torch.compile.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np

from streetcascade.timing import interleaved, summary

MODELS = {
    "vits16": ("random:vits16", "DINOv3 ViT-S/16 + head"),
    "vitl16": ("random:vitl16", "DINOv3 ViT-L/16 + head"),
    "tiny": ("random:tiny", "DINOv3 tiny (test size)"),
}


def _module(source: str, workdir: Path):
    from streetcascade.compile.models import get_family
    from streetcascade.config import StageConfig

    stage = StageConfig(name="bench", family="dinov3", source=source, max_batch=8)
    return get_family("dinov3").load(stage, workdir / "bench.toml").graphs[0].module.eval()


def _torch_fn(module, device: str, half: bool, compiled_mode: str | None):
    import torch

    m = module.to(device)
    if half:
        m = m.half()
    if compiled_mode:
        m = torch.compile(m, mode=compiled_mode)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(device, non_blocking=False)
            logit = m(t).float().cpu().numpy()
        return 1.0 / (1.0 + np.exp(-logit))

    return run


def _compile_probe(source: str, mode: str, batch: int, device: str, queue) -> None:
    """In a child process: compile with `mode` and run once (the parent enforces the time limit)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fn = _torch_fn(_module(source, Path(tmp)), device, device == "cuda", mode)
            fn(np.zeros((batch, 224, 224, 3), np.uint8))
        queue.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def compile_mode_that_finishes(source: str, batch: int, device: str, limit_s: float) -> str:
    """max-autotune when it compiles within `limit_s` (probed in a child process), else default."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_compile_probe, args=(source, "max-autotune", batch, device, queue))
    proc.start()
    proc.join(limit_s)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return "default"
    return "max-autotune" if not queue.empty() and queue.get() == "ok" else "default"


def _target_fn(source: str, target: dict, workdir: Path, max_batch: int):
    """Compile with a streetcascade GPU target; returns (run, close, label)."""
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.runtime import load_engine_set

    import tomli_w

    cfg = workdir / f"{target['backend']}-{target.get('execution_provider', '')}.toml"
    cfg.write_text(tomli_w.dumps({"engines_dir": str(workdir / "engines"), "target": target,
                                  "stages": [{"name": "stage1", "family": "dinov3", "source": source, "max_batch": max_batch,
                                              "precision": "fp16" if target["device"] == "cuda" else "fp32"}]}))
    dest = compile_cascade(cfg, progress=False)
    es = load_engine_set(dest)
    stage = es.cascade.stages[0]

    def run(x: np.ndarray) -> np.ndarray:
        return stage.score(list(x))

    return run, es.close


def available_targets(device: str) -> list[tuple[str, dict]]:
    out = []
    if device == "cpu":
        return [("aoti (cpu)", {"backend": "aoti", "device": "cpu"})]
    try:
        import torch

        if torch.cuda.is_available():
            out.append(("aoti", {"backend": "aoti", "device": "cuda"}))
    except ImportError:
        pass
    try:
        import tensorrt  # noqa: F401

        out.append(("tensorrt", {"backend": "tensorrt", "device": "cuda"}))
    except ImportError:
        pass
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            out.append(("ort-cuda", {"backend": "onnxruntime", "device": "cuda", "execution_provider": "cuda"}))
    except ImportError:
        pass
    return out


def _print_rows(rows: list[dict], out) -> None:
    out("| model | batch | variant | median ms | p99 ms | x eager | x torch.compile |")
    out("|---|---|---|---|---|---|---|")
    for r in rows:
        out(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} | {r['vs_eager']:.2f} | {r['vs_compile']:.2f} |")


def run_gpu_bench(models, batches, runs=200, device="cuda", compile_limit_s=240.0, out=print, json_path: str = "") -> list[dict]:
    """Measures model by model; each model's rows are printed (and the JSON rewritten) as soon as
    they exist, so a time limit that cuts the run short still leaves the finished models."""
    import torch

    rows = []
    gpu_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    out(f"device: {gpu_name}; torch {torch.__version__}; end to end (uint8 host image -> host probability), random weights")
    for key in models:
        source, human = MODELS[key]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            max_batch = max(batches)
            variants = {"eager fp16" if device == "cuda" else "eager fp32": _torch_fn(_module(source, tmp), device, device == "cuda", None)}
            mode = compile_mode_that_finishes(source, max_batch, device, compile_limit_s) if device == "cuda" else "default"
            t0 = time.perf_counter()
            variants[f"torch.compile {mode}"] = _torch_fn(_module(source, tmp), device, device == "cuda", mode)
            closers = []
            for label, target in available_targets(device):
                try:
                    fn, close = _target_fn(source, target, tmp, max_batch)
                    variants[label] = fn
                    closers.append(close)
                except Exception as exc:  # noqa: BLE001 - report and measure the rest
                    out(f"  {label}: could not build ({type(exc).__name__}: {str(exc)[:200]})")
            out(f"{human}: built {len(variants)} variants in {time.perf_counter() - t0:.0f} s")
            import sys

            sys.stdout.flush()
            try:
                for batch in batches:
                    x = np.random.default_rng(0).integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8)
                    ref = variants[next(iter(variants))](x)
                    for name, fn in variants.items():
                        diff = float(np.abs(fn(x) - ref).max())
                        if diff > 5e-2:
                            out(f"  WARNING {name}: max |dp| {diff:.3g} vs eager")
                    times = interleaved({n: (lambda fn=fn: fn(x)) for n, fn in variants.items()}, runs=runs, warmup=10, rounds=4)
                    eager = summary(times[next(iter(variants))])[0]
                    compiled = summary(times[f"torch.compile {mode}"])[0]
                    for name, ms in times.items():
                        med, p99 = summary(ms)
                        rows.append({"model": key, "batch": batch, "variant": name, "median_ms": med, "p99_ms": p99,
                                     "vs_eager": eager / med, "vs_compile": compiled / med, "device": gpu_name})
            finally:
                for close in closers:
                    close()
        _print_rows([r for r in rows if r["model"] == key], out)
        if json_path:
            Path(json_path).write_text(json.dumps(rows, indent=2))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vits16,vitl16")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--compile-limit-s", type=float, default=240.0, help="give up on max-autotune after this long (then: default mode)")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    run_gpu_bench(args.models.split(","), [int(b) for b in args.batch.split(",")], args.runs, args.device, args.compile_limit_s, json_path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
