"""What this CPU can do at most: GEMM throughput per precision and library, measured side by
side in one run with the same threads, so a model's latency can be read as a fraction of the
limit ("the INT8 path runs at N% of the u8s8 GEMM limit").

    python -m bench.cpu_limits                         # the table
    python -m bench.cpu_limits --model-ms vits16:ort-int8-dynamic=24.1,vits16:ov-bf16=18.0

Each GEMM is a single MatMul graph (ONNX Runtime: FP32 MatMul, u8 x s8 MatMulInteger;
OpenVINO: the same FP32 MatMul computed in f32 and in bf16) or a torch.matmul (FP32, bf16), at
a square size (the peak) and at the shape a ViT's MLP has (tokens x hidden x 4 hidden). The
model's work is counted from its config: the linear layers (QKV, projection, MLP: 12 d^2 MACs
per token per layer), the attention MatMuls (2 n^2 d per layer) and the patch embedding; one
MAC = 2 ops.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np

from streetcascade.timing import interleaved

# DINOv3 (hidden, layers, patch, registers) of the bench presets.
VITS = {"vits16": (384, 12, 16, 4), "vitb16": (768, 12, 16, 4)}


def model_gops(key: str, size: int = 224) -> dict[str, float]:
    """Giga-ops per image (1 MAC = 2 ops): linear layers, attention MatMuls, patch embedding."""
    d, layers, patch, registers = VITS[key]
    patches = (size // patch) ** 2
    n = patches + 1 + registers
    linear = layers * 12 * d * d * n
    attention = layers * 2 * n * n * d
    embed = patches * 3 * patch * patch * d
    return {"linear": 2 * linear / 1e9, "attention": 2 * attention / 1e9, "embed": 2 * embed / 1e9,
            "total": 2 * (linear + attention + embed) / 1e9}


def _matmul_graph(path: Path, m: int, k: int, n: int, integer: bool) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w")
        node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
        x = helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
    else:
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    model = helper.make_model(helper.make_graph([node], "gemm", [x], [y], [weight]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def gemm_table(threads: int, runs: int = 30, shapes=((1024, 1024, 1024), (201, 384, 1536), (201, 768, 3072))) -> list[dict]:
    import onnxruntime as ort
    import torch

    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sc-gemm-") as tmp:
        for m, k, n in shapes:
            rng = np.random.default_rng(1)
            xf = rng.standard_normal((m, k)).astype(np.float32)
            xu = rng.integers(0, 256, (m, k), dtype=np.uint8)
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            sessions = {name: ort.InferenceSession(str(_matmul_graph(Path(tmp) / f"{name}-{m}.onnx", m, k, n, name == "ort-u8s8")), so,
                                                   providers=["CPUExecutionProvider"]) for name in ("ort-fp32", "ort-u8s8")}
            wt = torch.from_numpy(rng.standard_normal((k, n)).astype(np.float32))
            xt = torch.from_numpy(xf)
            wb, xb = wt.bfloat16(), xt.bfloat16()
            fns = {
                "ort-fp32": lambda: sessions["ort-fp32"].run(None, {"x": xf}),
                "ort-u8s8": lambda: sessions["ort-u8s8"].run(None, {"x": xu}),
                "torch-fp32": lambda: torch.matmul(xt, wt),
                "torch-bf16": lambda: torch.matmul(xb, wb),
            }
            if importlib.util.find_spec("openvino"):
                import openvino as ov

                core = ov.Core()
                graph = core.read_model(str(Path(tmp) / f"ort-fp32-{m}.onnx"))
                for precision in ("f32", "bf16"):
                    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
                    try:
                        request = core.compile_model(graph, "CPU", config).create_infer_request()
                    except RuntimeError:
                        continue
                    fns[f"ov-{precision}"] = lambda r=request: r.infer({0: xf})
            with torch.inference_mode():
                times = interleaved(fns, runs, warmup=3, rounds=3)
            for name, ms in times.items():
                med = float(np.median(ms))
                rows.append({"shape": f"{m}x{k}x{n}", "variant": name, "median_ms": med, "gops": 2 * m * k * n / med / 1e6})
    return rows


def main(argv=None) -> int:
    from streetcascade.machine import cpu_features, physical_cores

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--model-ms", default="", help="model:variant=ms,... measured latencies to express as a fraction of the limit")
    a = parser.parse_args(argv)
    threads = a.threads or physical_cores()
    print(f"# GEMM limits: {threads} thread(s), CPU features: {', '.join(cpu_features())}")
    rows = gemm_table(threads, a.runs)
    print("| GEMM (m x k x n) | variant | median ms | GOP/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['variant']} | {r['median_ms']:.3f} | {r['gops']:.0f} |")
    peak = {}
    for r in rows:
        peak[r["variant"]] = max(peak.get(r["variant"], 0.0), r["gops"])
    print("\npeak GOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))
    for key in VITS:
        g = model_gops(key)
        print(f"{key}: {g['total']:.2f} GOP per image (linear {g['linear']:.2f}, attention {g['attention']:.2f}, patch embedding {g['embed']:.2f})")
    limit_of = {"int8": "ort-u8s8", "bf16": "torch-bf16", "fp32": "ort-fp32"}
    for item in filter(None, a.model_ms.split(",")):
        name, ms = item.split("=")
        key, variant = name.split(":")
        achieved = model_gops(key)["total"] / float(ms) * 1e3
        kind = next((k for k in limit_of if k in variant), "fp32")
        best = max(peak.get(limit_of[kind], 0.0), peak.get("ov-bf16", 0.0) if kind == "bf16" else 0.0)
        print(f"{key} {variant} at {float(ms):.2f} ms: {achieved:.0f} GOP/s = {achieved / best:.0%} of the {kind} GEMM limit ({best:.0f} GOP/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
