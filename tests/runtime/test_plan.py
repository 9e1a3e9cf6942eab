"""The memory planner: estimates from a config before anything is built (no GPU needed), the
plan of a compiled engine set, and their arithmetic (shared scratch once per slot, KV caches,
the CUDA context, pinned host buffers outside a GPU budget)."""

import pytest
from streetcascade.config import load_config
from streetcascade.runtime.plan import MemoryPlan, PlanLine, limit_to_free_device_memory, plan_from_config
from streetcascade.sizing import CUDA_CONTEXT_BYTES, KNOWN, estimate_stage, model_shape
from support import REPO

from streetcascade.cli import main, parse_bytes
from streetcascade.errors import BadInput, BudgetExceeded, ConfigError
from streetcascade.settings import RuntimeConfig

GIB = 2**30


def test_full_cascade_fits_24_gib_and_not_16(capsys):
    """The seed plan (DINOv3-L FP16 + Florence-2-large FP16 + an 8B VLM in 4 bits) on one card."""
    cfg = str(REPO / "configs" / "plan-24gb.toml")
    assert main(["plan", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "stage1/dinov3" in out and "ocr/florence2" in out and "judge/vlm" in out and ": fits" in out
    assert main(["plan", "--config", cfg, "--budget", "16GiB"]) == BudgetExceeded.exit_code
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out and "budget of 16.00 GiB" in captured.err
    plan = plan_from_config(load_config(cfg))
    assert 16 * GIB < plan.total_bytes < 24 * GIB
    # it adds up: every part, the arena once per slot for the largest scratch, the context once
    parts = sum(line.weights_bytes + line.kv_bytes for line in plan.lines)
    assert plan.total_bytes == parts + plan.slots * max(line.shared_scratch_bytes for line in plan.lines) + CUDA_CONTEXT_BYTES


def test_weights_follow_size_and_precision():
    l16 = estimate_stage("s", "facebook/dinov3-vitl16-pretrain-lvd1689m", "dinov3", "fp16", 1)
    l32 = estimate_stage("s", "facebook/dinov3-vitl16-pretrain-lvd1689m", "dinov3", "fp32", 1)
    assert l16.weights_bytes == KNOWN["dinov3-vitl16"].params * 2 and l32.weights_bytes == 2 * l16.weights_bytes
    vlm = estimate_stage("j", "Qwen/Qwen3-VL-8B-Instruct-AWQ", "vlm", "int4", 1, max_tokens=1000)
    shape = KNOWN["qwen3-vl-8b"]
    # 4-bit (+ a 16-bit scale per 128 weights) except embeddings, head and vision tower, kept 16-bit
    assert vlm.weights_bytes == int((shape.params - shape.kept_16bit) * (0.5 + 2 / 128) + shape.kept_16bit * 2)
    assert vlm.weights_bytes < shape.params * 2 / 2
    assert vlm.kv_bytes == 1000 * shape.layers * 2 * shape.kv_heads * shape.head_dim * 2
    assert estimate_stage("j", "Qwen/Qwen3-VL-8B-Instruct-AWQ", "vlm", "int4", 4, max_tokens=1000).kv_bytes == 4 * vlm.kv_bytes


def test_shape_from_a_local_checkpoint(tiny_dinov3_dir):
    shape = model_shape(str(tiny_dinov3_dir), "dinov3")
    assert shape.kind == "vision" and shape.params > 0 and shape.layers >= 1
    assert model_shape("random:vits16", "dinov3") == KNOWN["dinov3-vits16"]
    with pytest.raises(ConfigError, match="no size known for 'someone/mystery-model'"):
        model_shape("someone/mystery-model", "dinov3")


def test_plan_arithmetic_and_free_memory_limit():
    lines = [
        PlanLine("a", "x", "a.plan", "cuda", 100, 10, 7, shared_scratch_bytes=50),
        PlanLine("b", "x", "b.plan", "cuda", 200, 0, 7, shared_scratch_bytes=80, kv_bytes=30),
    ]
    plan = MemoryPlan(lines, slots=3, budget_bytes=1000, context_bytes=5)
    assert plan.arena_bytes == 240  # the largest scratch, once per slot
    assert plan.total_bytes == 100 + 10 + 200 + 30 + 240 + 5  # pinned host buffers are not device memory
    assert plan.fits
    limited = limit_to_free_device_memory(plan, 500)
    assert limited.budget_bytes == 500 and not limited.fits and "free memory" in limited.table()
    assert limit_to_free_device_memory(plan, 0) is plan  # unknown: the configured budget stands
    cpu = MemoryPlan([PlanLine("a", "x", "a.onnx", "cpu", 100, 10, 7)], slots=1, budget_bytes=1000)
    assert cpu.total_bytes == 117  # on a CPU the host buffers are the same memory


@pytest.mark.parametrize("text,value", [("24GiB", 24 * GIB), ("16G", 16 * GIB), ("512 MiB", 512 << 20), ("1.5GiB", int(1.5 * GIB)), ("1000", 1000)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


def test_parse_bytes_refuses_garbage():
    with pytest.raises(BadInput, match="as a size"):
        parse_bytes("lots")


def test_plan_of_a_compiled_engine_set(tiny_engine_dir, capsys):
    assert main(["plan", "--engines", str(tiny_engine_dir)]) == 0
    assert "measured at compile time" in capsys.readouterr().out
    assert main(["plan", "--engines", str(tiny_engine_dir), "--budget", "1KiB"]) == BudgetExceeded.exit_code
