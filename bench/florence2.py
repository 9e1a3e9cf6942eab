"""Florence-2 `<OCR>` per image: the compiled graphs with the runtime's greedy decoding vs
transformers eager `generate()`, same model, same image, same tokens, one run: encoder ms
(vision + embeddings + encoder), ms per generated token, and the whole image.

    python -m bench.florence2 [--checkpoint DIR] [--size 96] [--tokens 20] [--runs 10]

Without --checkpoint it builds the family's tiny test model (random weights of the real
classes); with a real checkpoint folder (e.g. a download of florence-community/Florence-2-base)
use --size 768. The end token is suppressed on both sides so both generate exactly --tokens.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from streetcascade.timing import interleaved


def run(checkpoint: str | None, size: int, tokens: int, runs: int, out=print) -> dict:
    import torch
    import tomli_w
    from transformers import Florence2ForConditionalGeneration

    from streetcascade.compile.models.florence2 import CLIP_NORM, FAMILY, UInt8Preprocess
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.machine import physical_cores
    from streetcascade.runtime import load_engine_set

    torch.set_num_threads(physical_cores())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = Path(checkpoint) if checkpoint else FAMILY.write_test_checkpoint(tmp / "ckpt")
        cfg = tmp / "c.toml"
        cfg.write_text(tomli_w.dumps({"engines_dir": str(tmp / "engines"), "stages": [
            {"name": "ocr", "family": "florence2", "source": str(ckpt), "input_size": size, "max_batch": 1}]}))
        dest = compile_cascade(cfg, progress=False)
        model = Florence2ForConditionalGeneration.from_pretrained(ckpt).eval()
        image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
        with load_engine_set(dest) as es:
            reader = es.cascade.stages[0].reader
            eos = reader.generation["eos_token_id"]
            reader.suppress, reader.max_new_tokens = (eos,), tokens
            prompt = torch.tensor([reader.generation["prompts"]["<OCR>"]])
            pixel_values = UInt8Preprocess(CLIP_NORM)(torch.from_numpy(image[None]))

            def hf(n):
                with torch.no_grad():
                    return model.generate(input_ids=prompt, pixel_values=pixel_values, max_new_tokens=n, do_sample=False, num_beams=1,
                                          suppress_tokens=[eos])[0, 1:].tolist()

            def ours(n):
                reader.max_new_tokens = n
                return reader.generate(image)

            assert ours(tokens) == hf(tokens), "token sequences differ"
            # Interleaved rounds (streetcascade/timing.py): the same machine noise hits both paths.
            fns = {"transformers eager": hf, "streetcascade onnxruntime": ours}
            ones = interleaved({n: (lambda f=f: f(1)) for n, f in fns.items()}, runs=runs * 2, warmup=2, rounds=4)
            fulls = interleaved({n: (lambda f=f: f(tokens)) for n, f in fns.items()}, runs=runs * 2, warmup=2, rounds=4)
            timings = {}
            for name in fns:
                first, whole = float(np.median(ones[name])), float(np.median(fulls[name]))
                timings[name] = {"first_token_ms": first, "per_token_ms": (whole - first) / max(tokens - 1, 1), "image_ms": whole}
    out(f"Florence-2 <OCR>, {'tiny test model' if not checkpoint else checkpoint}, {size}x{size}, {tokens} tokens, median of {runs}:")
    out("| path | encoder + first token ms | ms per further token | whole image ms |")
    out("|---|---|---|---|")
    for name, t in timings.items():
        out(f"| {name} | {t['first_token_ms']:.1f} | {t['per_token_ms']:.2f} | {t['image_ms']:.1f} |")
    ratio = timings["transformers eager"]["image_ms"] / timings["streetcascade onnxruntime"]["image_ms"]
    out(f"streetcascade / transformers eager, whole image: {ratio:.2f}x faster (same tokens)")
    return {"timings": timings, "speedup": ratio}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args(argv)
    run(args.checkpoint, args.size, args.tokens, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
