"""SmolVLM / Idefics3's host side (runtime/smolvlm.py, numpy and Pillow only) against
transformers: the image processors' pixel values bit for bit with image splitting off (both
classes, PIL backend), the first resize's size rule, and the prefill positions of a left-padded
batch as generate() makes them."""

from __future__ import annotations

import numpy as np
import pytest

from streetcascade.errors import BadInput
from streetcascade.manifest import VlmEntry
from streetcascade.runtime import smolvlm as host
from streetcascade.runtime.vlm_host import RESAMPLE, left_pad, padded_positions, preparation_for

SHAPES = [(224, 224), (100, 140), (480, 640), (37, 301), (9, 13), (801, 299), (5000, 700)]


def spec(side: int = 64, longest: int = 256, resample: str = "lanczos", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> VlmEntry:
    return VlmEntry(model="smolvlm", prompt="", prompt_ids=[0], image_token_id=0, answer_tokens=[], answer_ids=[], answer_yes=[], patch_size=16,
                    merge_size=2, temporal_patch_size=1, min_pixels=side * side, max_pixels=side * side, mean=list(mean), std=list(std),
                    rescale=1 / 255, resample=resample, resize_longest_edge=longest, image_side=side, vision_tokens=(side // 32) ** 2)


def processor(kind: str, s: VlmEntry):
    if kind == "idefics3":
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as Processor
    else:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as Processor
    return Processor(do_image_splitting=False, do_resize=bool(s.resize_longest_edge), size={"longest_edge": s.resize_longest_edge or s.image_side},
                     max_image_size={"longest_edge": s.image_side}, resample=RESAMPLE[s.resample], image_mean=s.mean, image_std=s.std)


@pytest.mark.parametrize("kind", ["smolvlm", "idefics3"])
@pytest.mark.parametrize("settings", [{}, {"side": 96, "longest": 384, "resample": "bicubic", "mean": (0.48, 0.45, 0.4), "std": (0.26, 0.26, 0.27)},
                                      {"side": 64, "longest": 0}])
def test_pixel_values_equal_the_image_processors_bit_for_bit(kind, settings):
    s = spec(**settings)
    prep, ref = preparation_for(s), processor(kind, s)
    rng = np.random.default_rng(0)
    for h, w in SHAPES:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = ref(images=[[image]], return_tensors="np")
        got, grid = prep.patches(image)
        assert want["pixel_values"].shape == (1, 1, 3, s.image_side, s.image_side) and want["pixel_attention_mask"].all()
        assert got.dtype == np.float32 and np.array_equal(got, want["pixel_values"][0, 0]), (h, w)
        assert grid == (s.image_side // 16,) * 2 and prep.tokens(*grid) == s.vision_tokens
        assert list(prep.vision_feeds(got, grid)) == ["pixel_values"]


def test_first_resize_follows_the_processor():
    from transformers.models.smolvlm.image_processing_pil_smolvlm import get_resize_output_image_size

    rng = np.random.default_rng(1)
    for _ in range(300):
        h, w, longest = int(rng.integers(1, 6000)), int(rng.integers(1, 6000)), int(rng.choice([384, 512, 1536, 2048, 4096, 5000]))
        want = get_resize_output_image_size(np.zeros((1, h, w), np.uint8), resolution_max_side=longest)
        assert host.longest_edge_size(h, w, longest) == tuple(want), (h, w, longest)


def test_positions_of_a_left_padded_batch_are_as_generate_makes_them():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    ids, mask = left_pad([np.arange(5) + 3, np.arange(9) + 3], pad_id=0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2))
    want = model._prepare_position_ids_for_generation(torch.from_numpy(ids), {"attention_mask": torch.from_numpy(mask)})
    got = padded_positions(mask)
    assert np.array_equal(got, want.numpy()) and got[0, -1] == 4 and got[1, -1] == 8


@pytest.mark.parametrize("bad", [np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8), np.zeros((32, 32, 3), np.float32), "not an image"])
def test_bad_images_are_refused(bad):
    with pytest.raises(BadInput):
        preparation_for(spec()).patches(bad)
