"""The benchmark scripts (bench/, run from a checkout) still run and print side-by-side ratios."""

import importlib.util

import pytest

from bench.stage1 import run_stage1_bench


def test_stage1_bench_tiny_prints_ratios(capsys):
    rows = run_stage1_bench(["tiny"], [1, 2], runs=3, warmup=1, markdown=True)
    out = capsys.readouterr().out
    assert "torch-eager" in out and "ort-fp32" in out and "ort-int8-dynamic" in out
    assert "x eager" in out and "| DINOv3 tiny" in out
    fp32 = [r for r in rows if r["variant"] == "ort-fp32"]
    assert len(fp32) == 2 and all(r["max_abs_prob_diff_vs_torch"] < 1e-4 and r["same_decision"] == 1.0 for r in fp32)


def test_stage1_bench_openvino_variants(capsys):
    """OpenVINO rows built by the openvino target (bf16 and NNCF INT8 gated on synthetic scenes,
    limits open): same inputs, agreement with torch measured."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    rows = run_stage1_bench(["tiny"], [1], runs=3, warmup=1, precisions=("fp32", "openvino:fp32", "openvino:int8-static"))
    out = capsys.readouterr().out
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"torch-eager", "ort-fp32", "ov-fp32", "ov-int8-static"}
    assert by["ov-fp32"]["max_abs_prob_diff_vs_torch"] < 1e-4 and by["ov-int8-static"]["speedup_vs_eager"] > 0
    assert "tiny openvino:int8-static: vs FP32 on" in out and "flips" in out


def test_cpu_limits_counts_and_measures():
    from bench.cpu_limits import gemm_table, model_gops

    g = model_gops("vits16")
    assert abs(g["linear"] - 2 * 12 * 12 * 384**2 * 201 / 1e9) < 1e-9 and 9.0 < g["total"] < 10.0  # ViT-S/16 at 224: ~4.7 GMAC
    tiny = model_gops("tiny")  # MLP 2x wide, 2 layers: 4 d^2 + 2 d * 128 MACs per token per layer
    assert abs(tiny["linear"] - 2 * 2 * (4 * 64**2 + 2 * 64 * 128) * 201 / 1e9) < 1e-12
    rows = gemm_table(1, runs=3, shapes=((64, 64, 64),))
    assert {"ort-fp32", "ort-u8s8", "torch-fp32", "torch-bf16"} <= {r["variant"] for r in rows} and all(r["gops"] > 0 for r in rows)
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        assert {"ov-f32", "ov-u8s8"} <= {r["variant"] for r in rows}
    from bench.cpu_limits import kind_of, limit

    assert [kind_of(v) for v in ("ort-int8-dynamic", "ov-int8", "ov-bf16", "ov-fp32", "torch-eager")] == ["int8", "int8", "bf16", "fp32", "fp32"]
    assert limit({"ort-u8s8": 900.0, "ov-u8s8": 1200.0, "torch-bf16": 5000.0}, "int8") == (1200.0, "ov-u8s8")


def test_gpu_check_script_parses():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.slow
def test_gpu_bench_plumbing_on_the_cpu():
    """bench.gpu's whole path (eager, torch.compile, a streetcascade target through the backend)
    on the CPU with the tiny model: the same code the GPU check runs, minus the GPU."""
    from bench.gpu import run_gpu_bench

    lines = []
    rows = run_gpu_bench(["tiny"], [1], runs=4, device="cpu", out=lines.append)
    variants = {r["variant"] for r in rows}
    assert variants == {"eager fp32", "torch.compile default", "streetcascade aoti fp32"}
    assert all(r["median_ms"] > 0 and r["vs_eager"] > 0 and r["max_abs_dp"] < 1e-4 for r in rows)
    assert all(r["gpu_ms"] is None and r["vs_eager_graph"] is None for r in rows)  # no GPU: no GPU-only time, no graphed peer
    assert any(line.startswith("| tiny | 1 | streetcascade aoti fp32") for line in lines)
    assert any("eager fp32 + CUDA graph: needs CUDA" in line for line in lines)


def test_end_to_end_bench_tiny_prints_ratios():
    from bench.end_to_end import run

    lines = []
    rows = run(("fp32",), runs=3, model="vit-tiny-cls", out=lines.append)
    assert {r["input"] for r in rows} == {"224x224 JPEG (validator)", "320x240 photo"}
    assert {r["path"] for r in rows} == {"reference (PIL + ViTImageProcessor + torch eager)", "streetcascade onnxruntime:fp32"}
    assert all(r["median_ms"] > 0 and r["vs_reference"] > 0 for r in rows) and any("x reference" in line for line in lines)


def test_fused_attention_bench_keeps_parity():
    """The MultiHeadAttention export replaces every attention (one per layer) and keeps the
    outputs (rotary included, DINOv3 with layerscale 1 so attention matters)."""
    from bench.fused_attention import run

    lines = []
    result = run("dinov3", "tiny", runs=4, out=lines.append)
    assert result["fused_ops"] == 2 and result["max_abs_logit_diff"]["fp32"] < 1e-4
    assert set(result["median_ms"]) == {"plain-fp32", "plain-int8", "fused-fp32", "fused-int8"}
    assert any("MultiHeadAttention ops" in line for line in lines)


def test_frontend_bench_prints_library_rows_with_pixel_agreement(capsys):
    """bench.frontend on the validators' 224 x 224 JPEGs: every library row present (or skipped
    with a note), each writing the same pixels as the Python path (decode only at this size)."""
    from bench.frontend import run

    rows = run(("validator",), runs=3, threads=2)
    out = capsys.readouterr().out
    paths = {r["path"] for r in rows}
    assert {"python path (runtime today)", "PIL draft"} <= paths
    for lib in ("simplejpeg", "PyTurboJPEG"):
        assert lib in paths or f"note: {lib}" in out
    assert all(r["max_diff"] == 0 for r in rows)  # 224 x 224: every path decodes the same pixels
    assert "| validator | single | python path (runtime today) |" in out and "x best library" in out


def test_int4_bench_tiny_prints_ratios():
    """bench.int4's whole path on a tiny Qwen2: every variant built as compile builds it, timed,
    sized, its peak RSS measured in a fresh process, its logits compared with FP32."""
    from bench.int4 import run

    lines = []
    rows = run(hidden=64, layers=2, intermediate=128, heads=4, kv_heads=2, vocab=256, prefill=16, runs=2, rounds=1, out=lines.append)
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"fp32", "int8", "int4-b32", "int4-b128"}
    assert by["fp32"]["cosine_prefill"] == 1.0 and all(r["cosine_prefill"] > 0.9 and r["cosine_decode"] > 0.9 for r in rows)
    assert by["int4-b128"]["file_bytes"] < by["int8"]["file_bytes"] < by["fp32"]["file_bytes"]
    assert all(r["prefill_ms"] > 0 and r["decode_ms"] > 0 and r["peak_rss_bytes"] > 0 for r in rows)
    assert any(line.startswith("| int4-b32 |") for line in lines)


def test_vlm_bench_tiny_prints_the_tables(tmp_path):
    """bench.vlm's whole path on the tiny Qwen3-VL (phases in this process): FP32 / INT8 / INT4
    prefill side by side, the judges end to end vs transformers' generate, the FP32 judge's
    p(yes) equal to transformers'."""
    pytest.importorskip("tokenizers", exc_type=ImportError)
    from bench.vlm import GENERATE, run

    lines = []
    result = run(preset="tiny", size=224, runs=2, rounds=1, block=32, out=lines.append, workdir=str(tmp_path), in_process=True)
    text = "\n".join(lines)
    assert "| int4 |" in text and "| int8-dynamic |" in text and f"| {GENERATE} |" in text and "x faster than generate" in text
    p = result["judge"]["p_yes"]
    assert abs(p["fp32 (vision fp32, prefill fp32)"] - p[GENERATE]) < 1e-4 and abs(p["transformers forward"] - p[GENERATE]) < 1e-4
    assert result["file_bytes"]["int4"] < result["file_bytes"]["fp32"]
