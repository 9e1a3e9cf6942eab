"""The Qwen-VL judge's host side (runtime/qwen_vl.py, numpy only) against transformers: the image
processor's pixel values bit for bit, the vision tower's grid-dependent tensors, and the
language model's 3-D rotary index, on images of several sizes and aspect ratios."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tokenizers", exc_type=ImportError)

from streetcascade.runtime import qwen_vl as host  # noqa: E402
from streetcascade.runtime import vlm_host  # noqa: E402
from vlm_support import FAMILIES, load_model, processor_inputs, reference_processor  # noqa: E402

from streetcascade.errors import BadInput  # noqa: E402

SHAPES = [(224, 224), (100, 140), (480, 640), (37, 301), (9, 13)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from streetcascade.compile.models import get_family

    return {f: get_family(f).write_test_checkpoint(tmp_path_factory.mktemp(f) / "ckpt") for f in FAMILIES}


def spec_for(processor, family: str):
    from streetcascade.manifest import VlmEntry

    ip = processor.image_processor
    return VlmEntry(model=family, prompt="", prompt_ids=[0], image_token_id=0, answer_tokens=[], answer_ids=[], answer_yes=[],
                    patch_size=ip.patch_size, merge_size=ip.merge_size, temporal_patch_size=ip.temporal_patch_size,
                    min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"], mean=list(ip.image_mean), std=list(ip.image_std),
                    rescale=ip.rescale_factor, window_size=112, pos_embed_side=8)


@pytest.mark.parametrize("family", FAMILIES)
def test_patches_equal_the_image_processors_bit_for_bit(checkpoints, family):
    processor = reference_processor(checkpoints[family], family)
    prep = vlm_host.preparation_for(spec_for(processor, family))
    rng = np.random.default_rng(0)
    for h, w in SHAPES:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = processor.image_processor(images=[image], return_tensors="np")
        got, grid = prep.patches(image)
        assert [1, *grid] == want["image_grid_thw"][0].tolist(), (h, w)
        assert got.dtype == np.float32 and np.array_equal(got, want["pixel_values"]), (h, w)


@pytest.mark.parametrize("grid", [(16, 16), (8, 10), (34, 46), (2, 22), (6, 4)])
def test_vision_grid_tensors_equal_transformers(grid):
    import torch
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids, get_vision_window_index

    thw = torch.tensor([[1, *grid]])
    assert np.array_equal(host.vision_position_ids(*grid, 2), get_vision_position_ids(thw, 2).numpy())
    order, cu = host.window_index(*grid, 2, 112, 14)
    want_order, want_cu = get_vision_window_index(thw, 2, 112, 14)
    assert np.array_equal(order, want_order.numpy()) and cu.tolist() == want_cu.tolist()
    indices, weights = host.interpolation(*grid, 48, 2)
    want_i, want_w = get_vision_interpolation_indices_and_weights(thw, 48, "bilinear", True, 2)
    assert np.array_equal(indices, want_i.numpy()) and np.allclose(weights, want_w.numpy(), atol=1e-7, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_rope_index_equals_the_models_also_left_padded(checkpoints, family):
    """Two prompts of different image sizes as one left-padded batch: positions and the
    embedding merge's rows as transformers computes them."""
    import torch

    model = load_model(checkpoints[family], family)
    processor = reference_processor(checkpoints[family], family)
    rng = np.random.default_rng(1)
    rows, grids = [], []
    for h, w in [(120, 200), (300, 180)]:
        inputs = processor_inputs(processor, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        rows.append(inputs["input_ids"][0].numpy())
        grids.append(tuple(inputs["image_grid_thw"][0, 1:].tolist()))
    image_id = model.config.image_token_id
    ids, mask = vlm_host.left_pad(rows, pad_id=0)
    got = host.rope_index(ids, mask, image_id, grids, model.config.vision_config.spatial_merge_size)
    want, _ = model.model.get_rope_index(torch.from_numpy(ids), torch.from_numpy((ids == image_id).astype(np.int64)),
                                         image_grid_thw=torch.tensor([[1, *g] for g in grids]), attention_mask=torch.from_numpy(mask))
    assert np.array_equal(got, want.numpy().transpose(1, 0, 2))
    index = vlm_host.visual_index(ids, image_id)
    assert [int((r >= 0).sum()) for r in index] == [g[0] * g[1] // 4 for g in grids]
    assert all(np.array_equal(r[r >= 0], np.arange((r >= 0).sum())) for r in index)


def test_assemble_expands_the_one_placeholder():
    assert vlm_host.assemble([5, 9, 7, 8], 9, 3).tolist() == [5, 9, 9, 9, 7, 8]
    from streetcascade.errors import EngineMismatch

    with pytest.raises(EngineMismatch, match="2 image placeholders"):
        vlm_host.assemble([9, 9], 9, 3)


@pytest.mark.parametrize("bad", [np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8), np.zeros((32, 32, 3), np.float32),
                                 np.zeros((0, 32, 3), np.uint8), np.zeros((2, 500, 3), np.uint8), "not an image"])
def test_bad_images_are_refused(bad):
    from streetcascade.manifest import VlmEntry

    spec = VlmEntry(model="qwen3-vl", prompt="", prompt_ids=[0], image_token_id=0, answer_tokens=[], answer_ids=[], answer_yes=[], patch_size=16,
                    merge_size=2, temporal_patch_size=2, min_pixels=224 * 224, max_pixels=224 * 224, mean=[0.5] * 3, std=[0.5] * 3,
                    rescale=1 / 255, pos_embed_side=8)
    with pytest.raises(BadInput):
        vlm_host.preparation_for(spec).patches(bad)
