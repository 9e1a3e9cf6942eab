"""What this CPU can do at most: GEMM throughput per precision and library, measured side by
side in one run with the same threads, so a model's latency can be read as a fraction of the
limit ("the INT8 path runs at N% of the u8s8 GEMM limit").

    python -m bench.cpu_limits                         # the table
    python -m bench.cpu_limits --model-ms vits16:ort-int8-dynamic=24.1,vits16:ov-bf16=18.0

Each GEMM is a single MatMul graph (ONNX Runtime: FP32 MatMul, u8 x s8 MatMulInteger;
OpenVINO: the same FP32 MatMul computed in f32 and in bf16, and quantized by NNCF to a u8 x s8
FullyConnected) or a torch.matmul (FP32, bf16), at
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

# The models whose work the table prints (any DINOv3 preset of compile/models/dinov3.py counts).
VITS = ("vits16", "vitb16")


def vit_shape(key: str) -> dict[str, int]:
    """hidden, MLP width, layers, patch and register tokens of a DINOv3 preset."""
    from streetcascade.compile.models.dinov3 import COMMON, RANDOM_PRESETS

    p = RANDOM_PRESETS[key]
    return {"d": p["hidden_size"], "mlp": p["intermediate_size"], "layers": p["num_hidden_layers"], "patch": COMMON["patch_size"],
            "registers": COMMON["num_register_tokens"]}


def tokens(key: str, size: int = 224) -> int:
    v = vit_shape(key)
    return (size // v["patch"]) ** 2 + 1 + v["registers"]


def model_gops(key: str, size: int = 224) -> dict[str, float]:
    """Giga-ops per image (1 MAC = 2 ops): linear layers (QKV and output projections: 4 d^2, MLP:
    2 d * mlp MACs per token per layer), attention MatMuls (2 n^2 d per layer), patch embedding."""
    v = vit_shape(key)
    d, layers, patch = v["d"], v["layers"], v["patch"]
    patches = (size // patch) ** 2
    n = tokens(key, size)
    linear = layers * (4 * d * d + 2 * d * v["mlp"]) * n
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


def _ov_int8_matmul(graph, x: np.ndarray):
    """The FP32 MatMul graph quantized by NNCF (as the openvino target quantizes a model): the
    CPU plugin runs it as a u8 x s8 FullyConnected. None without NNCF."""
    if importlib.util.find_spec("nncf") is None:
        return None
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf.quantize(graph.clone(), nncf.Dataset([x, x[::-1].copy()]), subset_size=2, fast_bias_correction=True)


def gemm_fns(tmp: Path, threads: int, m: int, k: int, n: int) -> dict:
    """One callable per library and precision running an m x k x n GEMM (the graphs live in `tmp`)."""
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(1)
    xf = rng.standard_normal((m, k)).astype(np.float32)
    xu = rng.integers(0, 256, (m, k), dtype=np.uint8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sessions = {name: ort.InferenceSession(str(_matmul_graph(tmp / f"{name}-{m}x{k}x{n}.onnx", m, k, n, name == "ort-u8s8")), so,
                                           providers=["CPUExecutionProvider"]) for name in ("ort-fp32", "ort-u8s8")}
    wt = torch.from_numpy(rng.standard_normal((k, n)).astype(np.float32))
    xt = torch.from_numpy(xf)
    wb, xb = wt.bfloat16(), xt.bfloat16()

    def under_inference_mode(fn):
        def run():
            with torch.inference_mode():
                return fn()
        return run

    fns = {
        "ort-fp32": lambda: sessions["ort-fp32"].run(None, {"x": xf}),
        "ort-u8s8": lambda: sessions["ort-u8s8"].run(None, {"x": xu}),
        "torch-fp32": under_inference_mode(lambda: torch.matmul(xt, wt)),
        "torch-bf16": under_inference_mode(lambda: torch.matmul(xb, wb)),
    }
    if importlib.util.find_spec("openvino"):
        import openvino as ov

        core = ov.Core()
        graph = core.read_model(str(tmp / f"ort-fp32-{m}x{k}x{n}.onnx"))
        graphs = {"f32": graph, "bf16": graph}
        int8 = _ov_int8_matmul(graph, xf)
        if int8 is not None:  # u8 x s8 FullyConnected, the rest (nothing) in bf16 as our INT8 engines run
            graphs["u8s8"] = int8
        for variant, g in graphs.items():
            precision = "f32" if variant == "f32" else "bf16"
            config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
            try:
                request = core.compile_model(g, "CPU", config).create_infer_request()
            except RuntimeError:
                continue
            fns[f"ov-{variant}"] = lambda r=request: r.infer({0: xf})
    return fns


# The limit of a kind is the best library's: a model is held against what this CPU can do.
LIMIT_OF = {"int8": ("ort-u8s8", "ov-u8s8"), "bf16": ("torch-bf16", "ov-bf16"), "fp32": ("ort-fp32", "torch-fp32", "ov-f32")}
SHAPES = ((1024, 1024, 1024), (201, 384, 1536), (201, 768, 3072))


def kind_of(variant: str) -> str:
    """int8 / bf16 / fp32 from a variant's name (ort-int8-dynamic, ov-bf16, ov-int8, ...)."""
    return next((k for k in LIMIT_OF if k in variant), "fp32")


def limit(peak: dict[str, float], kind: str) -> tuple[float, str]:
    """(GOP/s, variant) of the best GEMM of `kind` in `peak`."""
    return max((peak.get(v, 0.0), v) for v in LIMIT_OF[kind])


def gemm_table(threads: int, runs: int = 30, shapes=SHAPES) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sc-gemm-") as tmp:
        for m, k, n in shapes:
            times = interleaved(gemm_fns(Path(tmp), threads, m, k, n), runs, warmup=3, rounds=3)
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
    for item in filter(None, a.model_ms.split(",")):
        name, ms = item.split("=")
        key, variant = name.split(":")
        achieved = model_gops(key)["total"] / float(ms) * 1e3
        kind = kind_of(variant)
        best, which = limit(peak, kind)
        print(f"{key} {variant} at {float(ms):.2f} ms: {achieved:.0f} GOP/s = {achieved / best:.0%} of the {kind} GEMM limit "
              f"({best:.0f} GOP/s, {which})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
