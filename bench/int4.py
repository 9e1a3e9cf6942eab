"""4-bit weights on a Qwen2-shaped causal LM (random weights), ONNX Runtime on this CPU, one run:
FP32 vs dynamic INT8 vs INT4 (MatMulNBits, round to nearest, block 32 and 128, accuracy_level 4),
each built the way `streetcascade compile` builds it (quantized, then optimised offline) and run
through the runtime's backend. Per variant: prefill ms (one sequence of --prefill tokens ->
last-position logits), one-token ms (a 1-token forward without a KV cache: the weight-streaming
part of a decode step, not the attention over past tokens), file size, peak RSS (a fresh process
that loads the graph and runs both), cosine of the logits vs FP32. Timings are interleaved rounds
in one process: only the ratios between rows mean anything on a shared machine.

    python -m bench.int4 [--hidden 1024 --layers 8 --intermediate 2816 --heads 16 --kv-heads 4 --vocab 8192]
                         [--prefill 300] [--runs 10] [--rounds 3] [--variants fp32,int8,int4-b32,int4-b128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from streetcascade.timing import interleaved

VARIANTS = ("fp32", "int8", "int4-b32", "int4-b128")


def last_logits(model):
    """torch wrapper around a causal LM: (input_ids, attention_mask) -> logits at the last position
    (the shape of a judge's prefill graph). Shared with the tests (tests/tiny_lm.py)."""
    import torch

    class LastLogits(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, -1, :]

    return LastLogits(model).eval()


def export_last_logits(model, path: Path, vocab: int, seq: int = 16) -> Path:
    """Export last_logits(model) to ONNX (opset 17, dynamic batch and length)."""
    import torch

    ids = torch.randint(0, vocab, (1, seq))
    with torch.no_grad():
        torch.onnx.export(last_logits(model), (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    return path


def export_lm(directory: Path, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int, vocab: int, seed: int = 0) -> Path:
    """A random Qwen2ForCausalLM of this shape, saved and loaded back, exported as
    (input_ids, attention_mask) -> last-position logits (dynamic batch and length)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096, tie_word_embeddings=False)
    Qwen2ForCausalLM(cfg).save_pretrained(directory / "lm")
    model = Qwen2ForCausalLM.from_pretrained(directory / "lm", attn_implementation="eager").eval()
    path = export_last_logits(model, directory / "lm.raw.onnx", vocab)
    del model
    return path


def graph_io(vocab: int, seq: int):
    from streetcascade.manifest import GraphIO, TensorSpec

    return GraphIO(inputs=[TensorSpec("input_ids", ["batch", "seq"], "int64"), TensorSpec("attention_mask", ["batch", "seq"], "int64")],
                   outputs=[TensorSpec("logits", ["batch", vocab], "float32")], max_batch=1, axis_sizes={"seq": seq})


def build(raw: Path, variant: str, io) -> Path:
    """The engine file compile would write for this precision (offline-optimised for this CPU)."""
    import onnx

    from streetcascade.compile import int4
    from streetcascade.compile.targets.onnxruntime import optimize_offline, quantize_dynamic_int8

    src = raw
    if variant == "int8":
        src = quantize_dynamic_int8(raw, raw.with_name("lm.int8.onnx"))
    elif variant.startswith("int4-b"):
        block = int(variant.removeprefix("int4-b"))
        model = int4.quantize_matmul_nbits(onnx.load(str(raw)), block_size=block, symmetric=True, accuracy_level=4, inplace=True)
        src = int4.save_model(model, raw.with_name(f"lm.{variant}.tmp.onnx"))
    return optimize_offline(src, raw.with_name(f"lm.{variant}.onnx"), io)


def feeds(vocab: int, seq: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, vocab, (1, seq)).astype(np.int64), "attention_mask": np.ones((1, seq), np.int64)}


def peak_rss(path: Path, vocab: int, prefill: int) -> int:
    """Peak RSS of a fresh process that loads `path` through the backend and runs a prefill and
    a one-token forward (bytes); `path` None: the same process (ONNX Runtime imported) without a
    graph, the baseline."""
    code = (
        "import json\n"
        "from bench.int4 import feeds, graph_io\n"
        "from streetcascade.machine import peak_rss_bytes\n"
        "from streetcascade.runtime.backends import get_backend\n"
        "from streetcascade.settings import RuntimeConfig\n"
        f"vocab, prefill, path = {vocab}, {prefill}, {json.dumps(str(path) if path else '')}\n"
        "backend = get_backend('onnxruntime')\n"
        "if path:\n"
        "    with backend.load(path, graph_io(vocab, prefill), backend.options_for(RuntimeConfig(), 'cpu')) as engine, engine.slot() as slot:\n"
        "        slot.infer(feeds(vocab, prefill)); slot.infer(feeds(vocab, 1))\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
        "print(peak_rss_bytes())\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"peak RSS run failed: {done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run(hidden: int = 1024, layers: int = 8, intermediate: int = 2816, heads: int = 16, kv_heads: int = 4, vocab: int = 8192,
        prefill: int = 300, runs: int = 10, rounds: int = 3, variants=VARIANTS, out=print) -> list[dict]:
    from streetcascade.runtime.backends import get_backend
    from streetcascade.settings import RuntimeConfig

    if "fp32" not in variants:
        raise SystemExit("--variants must include fp32 (the reference)")
    backend = get_backend("onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = export_lm(tmp, hidden, layers, intermediate, heads, kv_heads, vocab)
        io = graph_io(vocab, prefill)
        paths = {v: build(raw, v, io) for v in variants}
        long, one = feeds(vocab, prefill), feeds(vocab, 1)
        engines, slots, outputs = {}, {}, {}
        try:
            for v, path in paths.items():
                engines[v] = backend.load(str(path), io, backend.options_for(RuntimeConfig(), "cpu"))
                slots[v] = engines[v].slot()
                outputs[v] = (slots[v].infer(long)["logits"], slots[v].infer(one)["logits"])
            pre = interleaved({v: (lambda s=slots[v]: s.infer(long)) for v in variants}, runs=runs, warmup=1, rounds=rounds)
            dec = interleaved({v: (lambda s=slots[v]: s.infer(one)) for v in variants}, runs=runs * 10, warmup=3, rounds=rounds)
        finally:
            for thing in [*slots.values(), *engines.values()]:
                thing.close()
        base_rss = peak_rss(None, vocab, prefill)
        rows = []
        for v in variants:
            rows.append({
                "variant": v, "prefill_ms": float(np.median(pre[v])), "decode_ms": float(np.median(dec[v])),
                "file_bytes": paths[v].stat().st_size, "peak_rss_bytes": peak_rss(paths[v], vocab, prefill),
                "cosine_prefill": cosine(outputs[v][0], outputs["fp32"][0]), "cosine_decode": cosine(outputs[v][1], outputs["fp32"][1]),
            })
    fp32 = rows[0] if rows[0]["variant"] == "fp32" else next(r for r in rows if r["variant"] == "fp32")
    out(f"Qwen2-shaped LM, random weights: hidden {hidden} x {layers} layers, MLP {intermediate}, heads {heads}/{kv_heads} kv, vocab {vocab}; "
        f"ONNX Runtime CPU, prefill {prefill} tokens, medians of {runs} (prefill) / {runs * 10} (one token) runs in {rounds} interleaved rounds; "
        f"peak RSS of a fresh process (baseline without a graph: {base_rss / 2**20:.0f} MiB)")
    out("| variant | prefill ms | x FP32 | one-token ms | x FP32 | file MiB | x smaller | peak RSS MiB | cosine vs FP32 (prefill / one token) |")
    out("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        out(f"| {r['variant']} | {r['prefill_ms']:.1f} | {fp32['prefill_ms'] / r['prefill_ms']:.2f}x | {r['decode_ms']:.2f} | "
            f"{fp32['decode_ms'] / r['decode_ms']:.2f}x | {r['file_bytes'] / 2**20:.1f} | {fp32['file_bytes'] / r['file_bytes']:.2f}x | "
            f"{r['peak_rss_bytes'] / 2**20:.0f} | {r['cosine_prefill']:.4f} / {r['cosine_decode']:.4f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prefill", type=int, default=300)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)} (fp32 required)")
    args = ap.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = [v for v in variants if v not in VARIANTS and not (v.startswith("int4-b") and v.removeprefix("int4-b").isdigit())]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}")
    run(args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads, args.vocab, args.prefill, args.runs, args.rounds, variants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
