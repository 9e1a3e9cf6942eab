"""INT8 / bf16 benchmark: torch eager vs ORT FP32 vs ORT dynamic INT8 vs ORT static INT8 (QDQ)
vs OpenVINO FP32 / bf16 / NNCF INT8 (when installed) on the same stage-1 model, same inputs, same threads, in one run; with agreement vs FP32 measured on
the validation split of a synthetic labelled set under the validator mix.

The DINOv3 backbones are random (real architectures); the head is fitted on synthetic scenes
(cones/stripes vs plain roads) first, so logits are spread and decision flips mean something.

    python -m bench.quant --models vits16,vitb16 --runs 60 --rounds 6
    python -m bench.quant --models tiny --runs 6 --variants   # + the investigation's variants
    python -m bench.quant --models vits16 --limits            # + each variant as a fraction of its GEMM limit,
                                                              #   the limits timed in the same rounds

Every static variant is built by `compile.quantize.build_static`, the builder `compile` runs for
`precision = "int8-static"`; FP32 and dynamic INT8 by the onnxruntime target, like `compile`;
the OpenVINO engines by the openvino target's own steps (compile/targets/openvino.py: the IR with
its compute precision, NNCF on the same calibration split). bf16 rows appear where the CPU has it.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.cpu_limits import gemm_fns, kind_of, limit, model_gops, tokens, vit_shape
from streetcascade.timing import interleaved

MODELS = {"vits16": "DINOv3 ViT-S/16 + head", "vitb16": "DINOv3 ViT-B/16 + head", "tiny": "DINOv3 tiny (test size)"}

# The static-INT8 variants the investigation compares (docs/quantization.md).
def _variants():
    from streetcascade.compile.quantize import StaticRecipe

    final = StaticRecipe()
    return {
        "int8-static": final,
        "static-plain": StaticRecipe(quantize_outputs=True, constant_weights_only=False, quantize_patch_embed=True, quantize_head=True, fuse_bias=False),
        "static-outQ": replace(final, quantize_outputs=True),
        "static-nofuse": replace(final, fuse_bias=False),
        "static-s8s8": replace(final, activation_type="int8"),
        "static-conv": replace(final, quantize_patch_embed=True),
        "static-entropy": replace(final, method="entropy"),
        "static-pct": replace(final, method="percentile"),
        "static-pct9999": replace(final, method="percentile", percentile=99.99),
        "static-sym": replace(final, activation_symmetric=True),
        # Layers put back to FP32 after calibration (same scales elsewhere): the 12 MLP
        # down-projections (post-GELU, long-tailed inputs), or the N most harmful layers of the
        # gate's sensitivity pass (`sensitivity_keep_fp32 = N`).
        "static-downfp32": final,
        "static-keep2": final,
        "static-keep4": final,
        "static-keep8": final,
    }


def _fp32_nodes(name: str, raw: Path, harm) -> list[str]:
    """Weighted nodes variant `name` leaves FP32 (see _variants)."""
    from streetcascade.compile.quantize import _load, name_nodes, weighted_nodes

    if name.endswith("downfp32"):
        model = _load(raw)
        name_nodes(model)
        return [n.name for n in weighted_nodes(model) if n.role == "body" and ("down_proj" in n.name or "fc2" in n.name)]
    if "-keep" in name:
        return [h.name for h in harm()[: int(name.rsplit("keep", 1)[1])]]
    return []


def _classifier(key: str, layerscale: float):
    """Random DINOv3 of a real architecture. DINOv3's *init* layerscale (1e-5) makes every
    residual branch ~0, so a random model's output hardly depends on the transformer layers
    and INT8 errors there are invisible; trained DINOv3s have layerscales of order 0.1-1."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from streetcascade.compile.models.base import Normalization
    from streetcascade.compile.models.dinov3 import COMMON, RANDOM_PRESETS, DinoV3Classifier
    from streetcascade.compile.models.head import random_head

    torch.manual_seed(0)
    config = DINOv3ViTConfig(**{**COMMON, "layerscale_value": layerscale}, **RANDOM_PRESETS[key], image_size=224)
    backbone = DINOv3ViTModel(config).eval()
    return DinoV3Classifier(backbone, random_head(2 * config.hidden_size, 0), 224, Normalization()).eval()


def _data(workdir: Path, n_per_class: int, seed: int):
    from streetcascade.calibration.source import DataSpec, load_challenges, open_samples
    from streetcascade.calibration.synthetic import write_scene_folder

    root = write_scene_folder(workdir / "scenes", n_per_class, seed=seed)
    spec = DataSpec(folder=root)
    return {split: load_challenges(open_samples(spec), split) for split in ("calibration", "validation", "test")}


def _label(engine_key: str) -> str:
    return engine_key if engine_key.startswith("ov-") else f"ort-{engine_key}"


def _engine_key(label: str) -> str:
    return label[4:] if label.startswith("ort-") else label


def _openvino_engines(raw: Path, stem: Path, calib: np.ndarray) -> dict[str, Path]:
    """ov-fp32, ov-bf16 (CPUs with bf16), ov-int8 (NNCF on `calib`, the rest in bf16 where the CPU has it): IRs as the
    openvino target writes them (and the backend runs batch 1 through its fixed-shape copy, as the runtime does)."""
    from streetcascade.compile.targets.openvino import nncf_int8, onnx_metadata, save_gated_ir, save_ir
    from streetcascade.progress import QUIET
    from streetcascade.runtime.backends.openvino import core, has_bf16

    meta = onnx_metadata(raw)
    out = {"ov-fp32": save_ir(core().read_model(str(raw)), stem.with_suffix(".ov-fp32.xml"), "f32", meta)}
    if has_bf16():
        out["ov-bf16"] = save_gated_ir(core().read_model(str(raw)), stem.with_suffix(".ov-bf16.xml"), "bf16", meta)
    out["ov-int8"] = save_gated_ir(nncf_int8(core().read_model(str(raw)), calib, QUIET), stem.with_suffix(".ov-int8.xml"), "int8-static", meta)
    return out


def run_quant_bench(models, runs=60, rounds=6, warmup=3, threads=0, n_per_class=150, variants=False, seed=0, layerscale=1.0,
                    only=(), calib_samples=0, sensitivity_samples=64, openvino=None, limits=False) -> list[dict]:
    import torch

    from streetcascade.calibration import metrics
    from streetcascade.compile.accuracy_gate import layer_sensitivity
    from streetcascade.compile.export import export_graph
    from streetcascade.compile.fit_head import extract_features
    from streetcascade.compile.models.base import ExportableGraph, GraphDecl
    from streetcascade.compile.models.head import fit_logistic_head
    from streetcascade.compile.quantize import build_static, dequantize_nodes, op_histogram, quantize_static_qdq
    from streetcascade.compile.targets.onnxruntime import optimize_offline, quantize_dynamic_int8
    from streetcascade.machine import cpu_features, physical_cores
    from streetcascade.runtime.backends import get_backend
    from streetcascade.runtime.classifier import classifier_io, sigmoid
    from streetcascade.settings import RuntimeConfig

    threads = threads or physical_cores()
    runtime = RuntimeConfig(intra_op_threads=threads)
    io = classifier_io(224, 8)
    if openvino is None:
        import importlib.util

        openvino = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
    backend = get_backend("onnxruntime")
    torch.set_num_threads(threads)
    print(f"# INT8 benchmark: {threads} thread(s), batch 1, {runs} timed runs per variant in {rounds} interleaved rounds; "
          f"CPU features: {', '.join(cpu_features()) or '?'}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sc-qbench-") as tmp:
        workdir = Path(tmp)
        data = _data(workdir, n_per_class, seed)
        print(f"# data: synthetic scenes, validator mix; calibration {len(data['calibration'])}, validation {len(data['validation'])}, "
              f"head fitted on test split {len(data['test'])}", flush=True)
        for key in models:
            classifier = _classifier(key, layerscale)
            fit = data["test"].batch(224)
            head, stats = fit_logistic_head(extract_features(classifier, list(fit)), data["test"].labels, l2=1.0)
            classifier.head = head
            raw = workdir / f"{key}.raw.onnx"
            export_graph(ExportableGraph(GraphDecl("classifier", io), classifier, None), raw)
            calib, val = data["calibration"].batch(224), data["validation"].batch(224)
            engines, slots = {}, {}

            def slot(name):
                if name not in slots:
                    b = ov_backend if name.startswith("ov-") else backend
                    engines[name] = b.load(str(paths[name]), io, b.options_for(runtime, "cpu"))
                    slots[name] = engines[name].slot()
                return slots[name]

            def logits(name, x):
                return slot(name).logits(x)

            paths = {"fp32": optimize_offline(raw, workdir / f"{key}.fp32.onnx", io, runtime),
                     "int8-dynamic": optimize_offline(quantize_dynamic_int8(raw, workdir / f"{key}.raw.int8.onnx"), workdir / f"{key}.dyn.onnx", io, runtime)}
            if calib_samples:
                calib = calib[:calib_samples]
            every = _variants()
            unknown = [n for n in only if n not in every]
            if unknown:
                raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(every)}")
            names = list(only) or (list(every) if variants else ["int8-static"])
            x_sens = val[:sensitivity_samples]
            ranking: list = []

            def harm():
                # The gate's sensitivity pass (compile/static_int8.py): one layer quantized at a
                # time, on a prefix of the validation split, ranked by flips then mean |dp|.
                if not ranking:
                    qdq = workdir / f"{key}.sens.qdq.onnx"
                    first = quantize_static_qdq(raw, qdq, calib, every["int8-static"])
                    p_ref = sigmoid(logits("fp32", x_sens))
                    allq = set(first.quantized)
                    ranking.extend(layer_sensitivity(first.quantized, lambda n: dequantize_nodes(qdq, raw, sorted(allq - {n})), x_sens, p_ref, io, workdir, runtime))
                    print(f"# sensitivity ({len(x_sens)} validation images): " + ", ".join(f"{h.name} {h.flip_rate:.1%}/{h.mean_abs_prob_error:.4f}" for h in ranking[:8]), flush=True)
                return ranking

            for name in names:
                kept = _fp32_nodes(name, raw, harm)
                paths[name] = build_static(raw, workdir / f"{key}.{name}.onnx", calib, every[name], io, runtime, kept).path
            if openvino:
                paths.update(_openvino_engines(raw, workdir / key, calib))
            ov_backend = get_backend("openvino") if openvino else None
            for n in paths:
                slot(n)

            x1 = val[:1]
            xt = torch.from_numpy(x1)

            def eager():
                with torch.inference_mode():
                    return classifier(xt)

            fns = {"torch-eager": eager, **{_label(n): (lambda n=n: slots[n].infer({"pixels": x1})) for n in paths}}
            gemm_ops = {}
            if limits:  # the GEMM limits timed in the same rounds as the models: square, and the model's MLP shape
                shape = vit_shape(key)
                for m, k, n in ((1024, 1024, 1024), (tokens(key), shape["d"], shape["mlp"])):
                    for name, fn in gemm_fns(workdir, threads, m, k, n).items():
                        fns[f"gemm:{name}:{m}x{k}x{n}"] = fn
                        gemm_ops[f"gemm:{name}:{m}x{k}x{n}"] = (name, 2 * m * k * n)
            times = interleaved(fns, runs, warmup, rounds)
            peak = {}
            for label, (name, ops) in gemm_ops.items():
                peak[name] = max(peak.get(name, 0.0), ops / float(np.median(times.pop(label))) / 1e6)
            if peak:
                print("# GEMM limits in the same rounds, GOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()), flush=True)
            y = data["validation"].labels
            p32 = sigmoid(logits("fp32", val))
            base = float(np.median(times["ort-fp32"]))
            eager_ms = float(np.median(times["torch-eager"]))
            print(f"\n## {MODELS[key]} (head train accuracy {stats['train_accuracy']:.3f}; FP32 logit std on validation {np.std(np.log(p32 / (1 - p32))):.2f})", flush=True)
            for name, ms in times.items():
                med = float(np.median(ms))
                row = {"model": MODELS[key], "variant": name, "median_ms": med, "min_ms": float(ms.min()), "p90_ms": float(np.percentile(ms, 90)),
                       "x_fp32": base / med, "x_eager": eager_ms / med}
                if name != "torch-eager":
                    engine_key = _engine_key(name)
                    p = sigmoid(logits(engine_key, val))
                    flipped = np.round(p) != np.round(p32)
                    row.update(n_flips=int(flipped.sum()), n_val=len(p), flips_heldout=int(flipped[len(x_sens):].sum()) if "-keep" in name else None,
                               flips=float(np.mean(flipped)), max_dp=float(np.abs(p - p32).max()),
                               mean_dp=float(np.abs(p - p32).mean()), accuracy=metrics.accuracy(y, p), mcc=metrics.mcc(y, p))
                    ops = op_histogram(paths[engine_key]) if name.startswith("ort-") else {}
                    row["ops"] = {k: v for k, v in ops.items() if k in ("MatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul",
                                                                      "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Add", "Conv", "QLinearConv", "Gemm")}
                if peak:
                    row["gops"] = model_gops(key)["total"] / med * 1e3
                    row["limit_gops"], row["limit_of"] = limit(peak, kind_of(name))
                    row["of_limit"] = row["gops"] / row["limit_gops"]
                rows.append(row)
                extra = f"  {row['gops']:.0f} GOP/s = {row['of_limit']:.0%} of the {kind_of(name)} limit ({row['limit_of']})" if peak else ""
                if "flips" in row:
                    held = f" (after the {len(x_sens)} sensitivity images: {row['flips_heldout']}/{row['n_val'] - len(x_sens)})" if row["flips_heldout"] is not None else ""
                    extra += f"  flips {row['n_flips']}/{row['n_val']} = {row['flips']:.2%}{held}  max|dp| {row['max_dp']:.3g}  acc {row['accuracy']:.3f}  MCC {row['mcc']:.3f}  {row['ops']}"
                print(f"{name:<20} median {med:8.2f} ms  min {row['min_ms']:8.2f}  p90 {row['p90_ms']:8.2f}  {row['x_fp32']:5.2f}x ORT fp32  "
                      f"{row['x_eager']:5.2f}x eager{extra}", flush=True)
            for s in slots.values():
                s.close()
            for e in engines.values():
                e.close()
    print("\n| model | variant | median ms | min ms | x eager | x ORT FP32 | flips vs FP32 | max abs dp | accuracy | MCC | of its GEMM limit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = lambda k, fmt: format(r[k], fmt) if k in r else "-"  # noqa: E731
        print(f"| {r['model']} | {r['variant']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['x_eager']:.2f}x | {r['x_fp32']:.2f}x | {f('flips', '.2%')} | {f('max_dp', '.3g')} | {f('accuracy', '.3f')} | {f('mcc', '.3f')} | {f('of_limit', '.0%')} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vits16,vitb16")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=150, help="synthetic images per class (split 20/40/40)")
    parser.add_argument("--variants", action="store_true", help="also time the static-INT8 variants of the investigation")
    parser.add_argument("--only", default="", help="comma-separated static variants to time (see _variants), e.g. int8-static,static-keep4")
    parser.add_argument("--calib-samples", type=int, default=0, help="calibrate on the first N calibration challenges (0 = all)")
    parser.add_argument("--sensitivity-samples", type=int, default=64, help="validation prefix for the static-keepN variants' sensitivity pass")
    parser.add_argument("--layerscale", type=float, default=1.0, help="random backbone's layerscale (DINOv3 init: 1e-5; see _classifier)")
    parser.add_argument("--no-openvino", action="store_true", help="leave out the OpenVINO rows")
    parser.add_argument("--limits", action="store_true", help="time the GEMM limits (bench.cpu_limits) in the same rounds and print "
                                                              "each variant's GOP/s as a fraction of its precision's limit")
    a = parser.parse_args(argv)
    run_quant_bench([m.strip() for m in a.models.split(",") if m.strip()], a.runs, a.rounds, a.warmup, a.threads, a.per_class, a.variants, layerscale=a.layerscale,
                    only=[v.strip() for v in a.only.split(",") if v.strip()], calib_samples=a.calib_samples, sensitivity_samples=a.sensitivity_samples,
                    openvino=False if a.no_openvino else None, limits=a.limits)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
