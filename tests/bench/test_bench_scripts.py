"""The benchmark scripts (bench/, run from a checkout) still run and print side-by-side ratios."""

from bench.stage1 import run_stage1_bench


def test_stage1_bench_tiny_prints_ratios(capsys):
    rows = run_stage1_bench(["tiny"], [1, 2], runs=3, warmup=1, markdown=True)
    out = capsys.readouterr().out
    assert "torch-eager" in out and "ort-fp32" in out and "ort-int8-dynamic" in out
    assert "x eager" in out and "| DINOv3 tiny" in out
    fp32 = [r for r in rows if r["variant"] == "ort-fp32"]
    assert len(fp32) == 2 and all(r["max_abs_prob_diff_vs_torch"] < 1e-4 and r["same_decision"] == 1.0 for r in fp32)
