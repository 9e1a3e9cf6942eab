"""A checkpoint quantized by real AutoAWQ (0.2.9, on the CPU) imports without re-quantizing:
every layer dequantizes to exactly what AutoAWQ's own `dequantize_gemm` gives (rounded to its
fp16), and the MatMulNBits graph answers like the float model and like AutoAWQ's own layers.

AutoAWQ is no dependency of streetcascade: the test installs it (and the packages it imports,
`--no-deps`, next to this venv's torch and transformers) into a throw-away folder under
${STREETCASCADE_CACHE:-~/.cache/streetcascade}/, from PyPI: hence `network`, and `slow` (~1 min)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.network, pytest.mark.slow]

# autoawq's imports that this venv lacks; all pure Python or small wheels (its `triton` and
# kernels are optional at run time: without them WQLinear_GEMM takes its naive path).
AWQ_PACKAGES = ["autoawq==0.2.9", "accelerate", "datasets", "zstandard", "dill", "xxhash", "multiprocess", "fsspec", "pandas",
                "python-dateutil", "pytz", "tzdata"]


def autoawq_site() -> Path:
    from streetcascade.machine import cache_dir

    root = cache_dir() / "autoawq-0.2.9-site"
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == " ".join(AWQ_PACKAGES):
        return root
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--target", str(tmp),
                           *AWQ_PACKAGES], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join(line for line in done.stderr.splitlines() if "is ignored" not in line)[-600:]
        pytest.skip(f"cannot install AutoAWQ from the package index here: {tail}")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    marker.write_text(" ".join(AWQ_PACKAGES))
    return root


def test_real_autoawq_checkpoint_imports_exactly(tmp_path):
    import onnx
    import torch
    from tiny_lm import cosine_rows, export_last_logits, lm_feeds, ort_run, torch_logits
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from streetcascade.compile import int4

    site = autoawq_site()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "float")
    feeds = lm_feeds()
    np.save(tmp_path / "ids.npy", feeds["input_ids"])
    script = Path(__file__).resolve().parents[1] / "autoawq_run.py"
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "float"), str(tmp_path / "awq"), str(tmp_path / "ids.npy"), "64"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = np.load(tmp_path / "awq" / "autoawq_reference.npz")

    layers = int4.read_awq_checkpoint(tmp_path / "awq")
    assert len(layers) == 7 and all(layer.group_size == 64 for layer in layers.values())
    for name, layer in layers.items():  # AutoAWQ's fp16 dequantization = ours rounded to fp16
        ours = layer.dequantize().T
        np.testing.assert_array_equal(ours.astype(np.float16).astype(np.float32), reference[f"w:{name}"], err_msg=name)

    float_dir = int4.write_dequantized_checkpoint(tmp_path / "awq", tmp_path / "awq-float")
    graph = int4.import_awq(onnx.load(str(export_last_logits(float_dir, tmp_path / "lm.onnx"))), layers, accuracy_level=0)
    report = int4.int4_report(graph)
    assert (report.method, report.awq_layers, report.block_size) == ("awq", 7, 64)
    got = ort_run(graph, feeds)
    want = torch_logits(float_dir, feeds)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert cosine_rows(got, reference["logits"]).min() > 0.9999  # AutoAWQ's own layers compute in fp16
