"""A VLM judge's activation memory, as the memory plan and the load-time budget check get it:
measured at the largest shapes its manifest allows (longest prompt + image, max_batch), as the
peak resident growth of the first run, in a process whose heap holds memory freed by earlier
work (a compile's), which the resident-size delta used to miss (1 MiB recorded for a 4-layer
Qwen3-VL-2B prefill). Lower bounds are the largest intermediate tensors of the graph, computed
from the model's shape."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest

pytest.importorskip("tokenizers", exc_type=ImportError)

from streetcascade.compile.pipeline import compile_cascade  # noqa: E402
from streetcascade.manifest import read_manifest  # noqa: E402
from streetcascade.runtime import load_engine_set  # noqa: E402
from streetcascade.runtime.backends import get_backend  # noqa: E402
from streetcascade.runtime.plan import plan_memory  # noqa: E402
from support import write_config  # noqa: E402

from streetcascade.errors import BudgetExceeded  # noqa: E402
from streetcascade.settings import RuntimeConfig  # noqa: E402

F32 = 4


def freed_heap(mib: int) -> None:
    """Leave this process as a compile leaves it: memory freed to the C heap and kept there (a
    freed 30 MiB block raises glibc's mmap threshold, so the 8 MiB blocks after it come from the
    heap). Work measured by resident-size delta afterwards reuses it unseen."""
    block = np.ones(30 << 20, np.uint8)
    del block
    blocks = [np.ones(8 << 20, np.uint8) for _ in range(mib // 8)]
    del blocks


def text_config(ckpt) -> dict:
    return json.loads((ckpt / "config.json").read_text())["text_config"]


def test_prefill_activations_grow_with_tokens_and_hold_the_attention_scores(tiny_vlm):
    """The compiled prefill graph measured fresh at two prompt lengths, after 400 MiB were freed
    to the heap: at least the attention scores of one layer ([batch, heads, tokens, tokens]
    float32) and the MLP's hidden ([batch, tokens, intermediate]), and more at more tokens."""
    ckpt, dest = tiny_vlm("qwen3-vl")
    prefill = read_manifest(dest).stages[0].graphs[1]
    text = text_config(ckpt)
    backend = get_backend("onnxruntime")
    options = backend.options_for(RuntimeConfig(), "cpu")
    measured = {}
    for tokens in (256, 512):
        io = msgspec.structs.replace(prefill.io, axis_sizes={**prefill.io.axis_sizes, "sequence": tokens})
        freed_heap(400)
        with backend.load(str(dest / prefill.file), io, options) as engine:
            measured[tokens] = engine.memory().activations_bytes
        batch = io.max_batch
        scores = batch * text["num_attention_heads"] * tokens * tokens * F32
        hidden = batch * tokens * text["intermediate_size"] * F32
        assert measured[tokens] >= max(scores, hidden), (tokens, measured[tokens], scores, hidden)
    assert measured[512] > 2 * measured[256]  # the scores grow with the square of the prompt


def test_compiled_judge_records_activations_at_its_largest_image_and_the_budget_refuses_it(tiny_vlm, tmp_path):
    """A judge allowed images of up to 768x768 pixels (576 image tokens; 2304 patches): the
    manifest's activations hold each graph's largest attention scores at those sizes, and a
    budget one byte short of the plan is refused before anything loads."""
    ckpt, _ = tiny_vlm("qwen3-vl")
    side = 768
    cfg = write_config(tmp_path / "c.toml", [{"name": "judge", "family": "qwen3-vl", "source": str(ckpt), "input_size": 224, "max_batch": 2,
                                              "judge": {"max_pixels": side * side}}], tmp_path / "engines")
    freed_heap(400)
    dest = compile_cascade(cfg, progress=False)
    manifest = read_manifest(dest)
    vision, prefill = manifest.stages[0].graphs
    patches, tokens = vision.io.axis_sizes["patches"], prefill.io.axis_sizes["sequence"]
    assert patches == (side // 16) ** 2 and tokens > (side // 32) ** 2
    heads_vision = json.loads((ckpt / "config.json").read_text())["vision_config"]["num_heads"]
    assert vision.memory.activations_bytes >= heads_vision * patches * patches * F32
    assert prefill.memory.activations_bytes >= 2 * text_config(ckpt)["num_attention_heads"] * tokens * tokens * F32
    assert vision.memory.method == prefill.memory.method == "rss-peak"
    total = plan_memory(manifest, RuntimeConfig()).total_bytes
    with pytest.raises(BudgetExceeded):
        load_engine_set(dest, RuntimeConfig(budget_bytes=total - 1))
    with load_engine_set(dest, RuntimeConfig(budget_bytes=total)) as es:
        assert es.cascade.stages[0].judge.run([np.zeros((side, side, 3), np.uint8)])["yes_logodds"].shape == (1,)
