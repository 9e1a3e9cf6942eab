"""The benchmark scripts (bench/, run from a checkout) still run and print side-by-side ratios."""

import pytest

from bench.stage1 import run_stage1_bench


def test_stage1_bench_tiny_prints_ratios(capsys):
    rows = run_stage1_bench(["tiny"], [1, 2], runs=3, warmup=1, markdown=True)
    out = capsys.readouterr().out
    assert "torch-eager" in out and "ort-fp32" in out and "ort-int8-dynamic" in out
    assert "x eager" in out and "| DINOv3 tiny" in out
    fp32 = [r for r in rows if r["variant"] == "ort-fp32"]
    assert len(fp32) == 2 and all(r["max_abs_prob_diff_vs_torch"] < 1e-4 and r["same_decision"] == 1.0 for r in fp32)


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
    assert variants == {"eager fp32", "torch.compile default", "aoti (cpu)"}
    assert all(r["median_ms"] > 0 and r["vs_eager"] > 0 for r in rows)
    assert any(line.startswith("| tiny | 1 | aoti (cpu)") for line in lines)


def test_end_to_end_bench_tiny_prints_ratios():
    from bench.end_to_end import run

    lines = []
    rows = run(("fp32",), runs=3, model="vit-tiny-cls", out=lines.append)
    assert {r["input"] for r in rows} == {"224x224 JPEG (validator)", "320x240 photo"}
    assert {r["path"] for r in rows} == {"reference (PIL + ViTImageProcessor + torch eager)", "streetcascade onnxruntime fp32"}
    assert all(r["median_ms"] > 0 and r["vs_reference"] > 0 for r in rows) and any("x reference" in line for line in lines)
