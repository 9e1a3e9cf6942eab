"""JPEG bytes -> probability, side by side in one run: the subnet's reference path (the base
miner's kind of model: a transformers ViT-B/16 classifier, PIL decode, its image processor,
PyTorch eager, softmax) vs streetcascade (decode with limits and JPEG draft scaling, resize,
the ONNX Runtime engine `streetcascade compile` builds for the same model, sigmoid).

    python -m bench.end_to_end [--precisions fp32,int8-dynamic,openvino:bf16] [--runs 30]

Inputs: a 224 x 224 JPEG like the validators send, and the samples' 320 x 240 street photo.
Random weights of the real ViT-B/16 shape (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np

from .stage1 import _build
from streetcascade.timing import interleaved, summary


def run(precisions=("fp32", "int8-dynamic"), runs: int = 30, model: str = "vit-b16-cls", out=print) -> list[dict]:
    import torch
    from PIL import Image
    from transformers import ViTImageProcessor

    from streetcascade.machine import physical_cores
    from streetcascade.runtime import decode_image
    from streetcascade.runtime.classifier import sigmoid
    from streetcascade.runtime.images import resize_to

    threads = physical_cores()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    validator = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(validator, "JPEG")
    photo = (Path(__file__).resolve().parents[1] / "samples" / "street-barrier.jpg").read_bytes()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sc-e2e-") as tmp:
        engines = {}
        module = None
        for p in precisions:
            m, engines[p] = _build(model, p, Path(tmp), threads, 1)
            module = module or m
        # The reference: the HF model inside our wrapper is the same ViTForImageClassification.
        hf_model = module.model if hasattr(module, "model") else module
        processor = ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        slots = {p: e.slot() for p, e in engines.items()}
        for label, data in (("224x224 JPEG (validator)", validator.getvalue()), ("320x240 photo", photo)):
            def reference(data=data):
                img = Image.open(io.BytesIO(data)).convert("RGB")
                inputs = processor(images=img, return_tensors="pt")
                with torch.inference_mode():
                    return torch.softmax(hf_model(**inputs).logits, -1)[0, 1].item()

            fns = {"reference (PIL + ViTImageProcessor + torch eager)": reference}
            for p, slot in slots.items():
                def ours(data=data, slot=slot, engine=engines[p]):
                    rgb = resize_to(decode_image(data, draft_size=224), 224)[None]
                    return float(sigmoid(slot.infer({engine.io.inputs[0].name: rgb})["logit"])[0])

                fns[f"streetcascade {p if ':' in p else 'onnxruntime:' + p}"] = ours
            times = interleaved(fns, runs=runs, warmup=3, rounds=3)
            base = summary(times[next(iter(fns))])[0]
            for name, ms in times.items():
                med, p99 = summary(ms)
                rows.append({"input": label, "path": name, "median_ms": med, "p99_ms": p99, "vs_reference": base / med})
        for e in engines.values():
            e.close()
    out(f"JPEG bytes -> probability, {model} (2 labels, random weights), {threads} thread(s), median of {runs}:")
    out("| input | path | median ms | p99 ms | x reference |")
    out("|---|---|---|---|---|")
    for r in rows:
        out(f"| {r['input']} | {r['path']} | {r['median_ms']:.1f} | {r['p99_ms']:.1f} | {r['vs_reference']:.2f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precisions", default="fp32,int8-dynamic")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--model", default="vit-b16-cls", help="vit-b16-cls (the subnet's base-miner shape) or vit-tiny-cls")
    args = ap.parse_args(argv)
    run(tuple(args.precisions.split(",")), args.runs, args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
