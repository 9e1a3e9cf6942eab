"""Stage-1 benchmark: PyTorch eager vs ONNX Runtime (FP32, dynamic INT8) on the same model,
same inputs, same thread count, in one run. Prints median / p99 ms and ratios.

    python -m bench.stage1 --models vits16,vitb16 --batch 1,8      (from a checkout; `make bench`)
    python -m bench.stage1 --models tiny --runs 10

The ONNX Runtime engines are built by the same target code `streetcascade compile` runs
(compile.targets.onnxruntime) and run through the runtime's backend.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from streetcascade.timing import interleaved, summary

MODELS = {
    # name: (family, source, human name)
    "vits16": ("dinov3", "random:vits16", "DINOv3 ViT-S/16 + head"),
    "vitb16": ("dinov3", "random:vitb16", "DINOv3 ViT-B/16 + head"),
    "vit-b16-cls": ("hf-classifier", "random:vitb16", "HF ViT-B/16 classifier (2 labels)"),
    "tiny": ("dinov3", "random:tiny", "DINOv3 tiny (test size)"),
    "vit-tiny-cls": ("hf-classifier", "random:tiny", "HF ViT classifier tiny (test size)"),
}


def _build(model_key: str, variant: str, workdir: Path, threads: int, max_batch: int):
    """The family's torch module + the engine `streetcascade compile` would build for it.
    `variant`: a precision ("fp32", "int8-dynamic": the onnxruntime target) or "TARGET:PRECISION"
    ("openvino:bf16", "openvino:int8-static"). Gated precisions calibrate and gate on synthetic
    scenes with the limits opened (a benchmark measures; the figures are printed, not enforced)."""
    from streetcascade.compile.export import export_graph
    from streetcascade.compile.models import get_family
    from streetcascade.compile.targets import BuildJob, get_target
    from streetcascade.config import GATED_PRECISIONS, CalibrationConfig, CascadeConfig, StageConfig
    from streetcascade.runtime.backends import get_backend
    from streetcascade.settings import RuntimeConfig

    target_name, _, precision = variant.rpartition(":")
    target_name = target_name or "onnxruntime"
    family, source, _ = MODELS[model_key]
    stage = StageConfig(name=model_key, family=family, source=source, precision=precision, max_batch=max_batch)
    config_path = workdir / "bench.toml"
    graph = get_family(family).load(stage, config_path).graphs[0]
    raw = workdir / f"{model_key}.raw.onnx"
    if not raw.exists():
        export_graph(graph, raw)
    runtime = RuntimeConfig(intra_op_threads=threads)
    calibration = None
    if precision in GATED_PRECISIONS:
        from streetcascade.calibration.synthetic import write_scene_folder

        scenes = workdir / "scenes"
        if not scenes.exists():
            write_scene_folder(scenes, 40, seed=0)
        calibration = CalibrationConfig(data=str(scenes), calibration_samples=32, validation_samples=32, max_flip_rate=1.0, max_mcc_drop=2.0,
                                        max_accuracy_drop=1.0, max_auc_drop=1.0, sensitivity_keep_fp32=0)
    target = get_target(target_name)
    suffix = target.suffix
    built = target.build(BuildJob(stage, CascadeConfig(stages=[stage], runtime=runtime, calibration=calibration), config_path, graph.decl.io, raw,
                                  workdir / f"{model_key}.{target_name}.{precision}{suffix}", graph=graph))
    if built.accuracy_gate is not None:
        g = built.accuracy_gate
        print(f"# {model_key} {variant}: vs FP32 on {g.n_images} synthetic validation images: flips {g.flip_rate:.1%}, max |dp| {g.max_abs_prob_error:.3g}")
    backend = get_backend(target.backend)
    return graph.module, backend.load(str(built.path), graph.decl.io, backend.options_for(runtime, "cpu"))


def _variant_name(variant: str) -> str:
    """"fp32" -> "ort-fp32", "openvino:bf16" -> "ov-bf16"."""
    target, _, precision = variant.rpartition(":")
    return {"": "ort", "onnxruntime": "ort", "openvino": "ov"}.get(target, target) + "-" + precision


def run_stage1_bench(models, batches, runs=30, warmup=5, threads=0, precisions=("fp32", "int8-dynamic"), markdown=False, seed=0) -> list[dict]:
    import torch

    from streetcascade.machine import cpu_features, physical_cores
    from streetcascade.runtime.classifier import sigmoid

    threads = threads or physical_cores()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    rows = []
    print(f"# stage-1 benchmark: {threads} thread(s) for torch and onnxruntime, {runs} timed runs each, "
          f"CPU features: {', '.join(cpu_features()) or '?'}")
    for key in models:
        if key not in MODELS:
            raise SystemExit(f"unknown model {key!r}; known: {', '.join(MODELS)}")
        with tempfile.TemporaryDirectory(prefix="sc-bench-") as tmp:
            workdir = Path(tmp)
            engines = {}
            module = None
            for precision in precisions:
                module_p, engines[precision] = _build(key, precision, workdir, threads, max(batches))
                module = module or module_p
            torch_module = module.eval()
            for batch in batches:
                x = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
                xt = torch.from_numpy(x)
                slots = {p: e.slot() for p, e in engines.items()}

                def eager():
                    with torch.inference_mode():
                        return torch_module(xt)

                fns = {"torch-eager": eager}
                for p, slot in slots.items():
                    fns[_variant_name(p)] = (lambda s=slot, e=engines[p]: s.infer({e.io.inputs[0].name: x}))
                times = interleaved(fns, runs, warmup)
                # Agreement with FP32 on this batch (and on the probability scale).
                with torch.inference_mode():
                    ref = sigmoid(torch_module(xt).double().numpy())
                base_ms = summary(times["torch-eager"])[0]
                for name, ms in times.items():
                    med, p99 = summary(ms)
                    row = {"model": MODELS[key][2], "batch": batch, "variant": name, "median_ms": med, "p99_ms": p99,
                           "speedup_vs_eager": base_ms / med, "per_image_ms": med / batch}
                    if name != "torch-eager":
                        key_ = next(p for p in engines if _variant_name(p) == name)
                        out = slots[key_].infer({engines[key_].io.inputs[0].name: x})["logit"]
                        prob = sigmoid(out.astype(np.float64))
                        row["max_abs_prob_diff_vs_torch"] = float(np.abs(prob - ref).max())
                        row["same_decision"] = float(np.mean(np.round(prob) == np.round(ref)))
                    rows.append(row)
                    _print_row(row)
            for e in engines.values():
                e.close()
    if markdown:
        print()
        print("| model | batch | variant | median ms | p99 ms | x eager | max abs dp vs torch | same decision |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            dp = f"{r['max_abs_prob_diff_vs_torch']:.1e}" if "max_abs_prob_diff_vs_torch" in r else "-"
            same = f"{r['same_decision']:.0%}" if "same_decision" in r else "-"
            print(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['median_ms']:.1f} | {r['p99_ms']:.1f} | {r['speedup_vs_eager']:.2f}x | {dp} | {same} |")
    return rows


def _print_row(r: dict) -> None:
    extra = ""
    if "max_abs_prob_diff_vs_torch" in r:
        extra = f"  max|dp| {r['max_abs_prob_diff_vs_torch']:.1e}, same decision {r['same_decision']:.0%}"
    print(f"{r['model']:<36} b={r['batch']:<2} {r['variant']:<17} median {r['median_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  "
          f"{r['speedup_vs_eager']:5.2f}x eager{extra}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vits16,vitb16")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--precision", default="fp32,int8-dynamic",
                        help="comma-separated; TARGET:PRECISION for other targets, e.g. openvino:fp32,openvino:bf16,openvino:int8-static")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    a = parser.parse_args(argv)
    run_stage1_bench(a.models.split(","), [int(b) for b in a.batch.split(",")], a.runs, a.warmup, a.threads, a.precision.split(","), a.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
