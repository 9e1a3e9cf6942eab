"""A tiny random-initialised Qwen2 causal LM (transformers' real Qwen2Config / Qwen2ForCausalLM,
saved and loaded back through from_pretrained) exported to ONNX as "token ids -> logits of the
last position": the shape of a VLM judge's prefill graph, small enough for CI. Wide enough
that the MatMul weights dominate the file (so 4-bit weights show in its size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_QWEN2 = dict(vocab_size=256, hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)


def write_tiny_qwen2(directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    Qwen2ForCausalLM(Qwen2Config(**TINY_QWEN2)).eval().save_pretrained(directory)
    return directory


def load_lm(directory: Path):
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()


def export_last_logits(model_dir: Path, path: Path) -> Path:
    from bench.int4 import export_last_logits as export

    return export(load_lm(model_dir), path, TINY_QWEN2["vocab_size"], seq=12)


def lm_feeds(batch: int = 2, seq: int = 20, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, TINY_QWEN2["vocab_size"], (batch, seq)).astype(np.int64),
            "attention_mask": np.ones((batch, seq), np.int64)}


def torch_logits(model_dir: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    from bench.int4 import last_logits

    wrapper = last_logits(load_lm(model_dir))
    with torch.no_grad():
        return wrapper(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()


def ort_run(model_or_path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    src = model_or_path if isinstance(model_or_path, (str, Path)) else model_or_path.SerializeToString()
    session = ort.InferenceSession(str(src) if isinstance(src, Path) else src, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
