"""int4 on ONNX Runtime's CUDA provider (`-m gpu`; skipped without a GPU or onnxruntime-gpu): an
AutoAWQ import runs on the GPU with no CPU fallback and answers like the CPU engine, and an int4
stage compiles for the cuda device."""

from __future__ import annotations

import numpy as np
import pytest
from awq_writer import write_awq_checkpoint
from support import write_config
from tiny_lm import cosine_rows, export_last_logits, lm_feeds, write_tiny_qwen2

pytestmark = pytest.mark.gpu


def _cuda_session(model):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")  # MatMulNBits must really run on CUDA
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CUDAExecutionProvider"])


def test_awq_import_runs_on_the_cuda_provider(tmp_path):
    import onnx
    import onnxruntime as ort

    from streetcascade.compile import int4

    write_tiny_qwen2(tmp_path / "lm")
    write_awq_checkpoint(tmp_path / "lm", tmp_path / "awq", group=128)
    float_dir = int4.write_dequantized_checkpoint(tmp_path / "awq", tmp_path / "awq-float")
    model = int4.import_awq(onnx.load(str(export_last_logits(float_dir, tmp_path / "lm.onnx"))), int4.read_awq_checkpoint(tmp_path / "awq"),
                            accuracy_level=0)
    feeds = lm_feeds()
    gpu = _cuda_session(model).run(None, feeds)[0]
    cpu = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert cosine_rows(gpu, cpu).min() > 0.9999 and np.abs(gpu - cpu).max() <= 1e-2 * np.abs(cpu).max()


def test_int4_stage_compiles_for_the_cuda_provider(tmp_path, tiny_dinov3_dir):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.manifest import read_manifest

    cfg = write_config(tmp_path / "c.toml", [{"name": "s", "family": "dinov3", "source": str(tiny_dinov3_dir), "precision": "int4", "max_batch": 2}],
                       tmp_path / "engines", target={"backend": "onnxruntime", "device": "cuda", "execution_provider": "cuda"})
    graph = read_manifest(compile_cascade(cfg, progress=False)).stages[0].graphs[0]
    assert graph.weight_quant is not None and graph.weight_quant.converted > 0 and graph.parity.max_abs_prob_error <= 0.15
