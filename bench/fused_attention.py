"""Does a fused attention op help ONNX Runtime on this CPU? The same model exported twice: as
`compile` does (attention as MatMul / Softmax / MatMul), and with every
`scaled_dot_product_attention` exported as ONNX Runtime's `com.microsoft.MultiHeadAttention`
(rotary applied before it, as the model does; what `attention = "fused"` compiles, via
compile/fused_attention.py); each optimised offline, FP32 and dynamic INT8,
timed at batch 1 side by side, outputs compared. Also lists what OpenVINO's CPU plugin makes of
the plain graph (its RoPE and attention fusions).

    python -m bench.fused_attention --model vits16 --family dinov3 --runs 40

DINOv3's random init (layerscale 1e-5) makes the attention branches ~0, so the comparison of
outputs uses `--layerscale 1` (the bench default) to make attention matter.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from streetcascade.timing import interleaved

def _model(family: str, key: str, layerscale: float):
    from streetcascade.compile.models import get_family
    from streetcascade.config import StageConfig

    graph = get_family(family).load(StageConfig(name="s", family=family, source=f"random:{key}", max_batch=8), Path("bench.toml")).graphs[0]
    for module in graph.module.modules():
        if hasattr(module, "lambda1"):  # DINOv3 layer scale
            module.lambda1.data.fill_(layerscale)
    return graph


def run(family="dinov3", key="vits16", runs=40, threads=0, layerscale=1.0, out=print) -> dict:
    import onnxruntime as ort

    from streetcascade.compile.export import export_graph
    from streetcascade.compile.fused_attention import count_fused
    from streetcascade.compile.targets.onnxruntime import optimize_offline, quantize_dynamic_int8
    from streetcascade.machine import physical_cores
    from streetcascade.runtime.classifier import classifier_io

    threads = threads or physical_cores()
    graph = _model(family, key, layerscale)
    io = classifier_io(224, 8)
    result = {}
    with tempfile.TemporaryDirectory(prefix="sc-mha-") as tmp:
        raws = {"plain": export_graph(graph, Path(tmp) / "plain.onnx"), "fused": export_graph(graph, Path(tmp) / "fused.onnx", fused_attention=True)}
        result["fused_ops"] = count_fused(raws["fused"])
        paths = {}
        for name, raw in raws.items():
            paths[f"{name}-fp32"] = optimize_offline(raw, raw.with_suffix(".opt.onnx"), io)
            paths[f"{name}-int8"] = optimize_offline(quantize_dynamic_int8(raw, raw.with_suffix(".q.onnx")), raw.with_suffix(".qopt.onnx"), io)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimised offline, like the runtime
        sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
        x = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
        outs = {k: s.run(None, {"pixels": x})[0] for k, s in sessions.items()}
        result["max_abs_logit_diff"] = {p: float(np.abs(outs[f"plain-{p}"] - outs[f"fused-{p}"]).max()) for p in ("fp32", "int8")}
        times = interleaved({k: (lambda s=s: s.run(None, {"pixels": x[:1]})) for k, s in sessions.items()}, runs=runs, warmup=3, rounds=4)
        result["median_ms"] = {k: float(np.median(v)) for k, v in times.items()}
        result["min_ms"] = {k: float(v.min()) for k, v in times.items()}
        try:
            import openvino as ov

            core = ov.Core()
            compiled = core.compile_model(core.read_model(str(raws["plain"])), "CPU", {"INFERENCE_NUM_THREADS": threads})
            result["openvino_layers"] = dict(Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()))
        except ImportError:
            pass
    out(f"{family} {key} (layerscale {layerscale}), {threads} thread(s), batch 1, {runs} runs: {result['fused_ops']} MultiHeadAttention ops")
    out(f"max |logit difference| fused vs plain: fp32 {result['max_abs_logit_diff']['fp32']:.2e}, int8 {result['max_abs_logit_diff']['int8']:.2e}")
    for k in result["median_ms"]:
        out(f"{k:<12} median {result['median_ms'][k]:8.2f} ms  min {result['min_ms'][k]:8.2f} ms")
    if "openvino_layers" in result:
        out("OpenVINO CPU plugin layers of the plain graph: " + ", ".join(f"{k} {v}" for k, v in sorted(result["openvino_layers"].items()) if k != "Const"))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="dinov3")
    parser.add_argument("--model", default="vits16")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--layerscale", type=float, default=1.0)
    a = parser.parse_args(argv)
    run(a.family, a.model, a.runs, a.threads, a.layerscale)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
