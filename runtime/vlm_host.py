"""What every VLM judge's host side shares (numpy and Pillow only; no torch, no transformers):
the compiled prompt's image span filled in, left padding, where each image token takes its
feature row, the image processors' rescale + normalise as a lookup table, a Pillow resize, and
the `Preparation` interface with its registry (one class per family's image processor and the
Python parts of its model's forward: runtime/qwen_vl.py, runtime/smolvlm.py).

Each family's preparation is tested against its transformers counterpart
(tests/runtime/test_qwen_vl_host.py, tests/runtime/test_smolvlm_host.py).
"""

from __future__ import annotations

import numpy as np

from streetcascade.errors import BadInput, EngineMismatch
from streetcascade.manifest import VlmEntry
from streetcascade.registry import Registry

# Pillow's resampling filters by the names the manifest uses (PIL.Image.Resampling values).
RESAMPLE = {"lanczos": 1, "bilinear": 2, "bicubic": 3}


def normalisation_table(mean, std, rescale: float) -> np.ndarray:
    """[3, 256] float32: the processor's value for every uint8 level of each channel (rescale in
    float64 then float32, as transformers' `rescale`; then (x - mean) / std in float32)."""
    levels = (np.arange(256, dtype=np.float64) * rescale).astype(np.float32)
    return np.stack([(levels - np.float32(m)) / np.float32(s) for m, s in zip(mean, std)]).astype(np.float32)


def check_rgb(rgb) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise BadInput(f"a VLM stage takes HxWx3 uint8 RGB images, got {getattr(rgb, 'dtype', type(rgb).__name__)} "
                       f"{list(getattr(rgb, 'shape', []))}")


def resize(rgb: np.ndarray, height: int, width: int, resample: str) -> np.ndarray:
    """Pillow's resize of a uint8 RGB image (what transformers' PIL image processors do); the
    image itself when it already has that size (Pillow returns a copy then)."""
    if (height, width) == rgb.shape[:2]:
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((width, height), RESAMPLE[resample]))


def assemble(prompt_ids: list[int], image_token_id: int, tokens: int) -> np.ndarray:
    """The prompt with its one image placeholder expanded to the image's `tokens` tokens."""
    ids = np.asarray(prompt_ids, np.int64)
    at = np.flatnonzero(ids == image_token_id)
    if at.size != 1:
        raise EngineMismatch(f"the compiled prompt holds {at.size} image placeholders, one expected")
    k = int(at[0])
    return np.concatenate([ids[:k], np.full(tokens, image_token_id, np.int64), ids[k + 1 :]])


def left_pad(rows: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts of different lengths as one batch, padded on the left (the last position is every
    row's last token): (input_ids, attention_mask)."""
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_id, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for i, r in enumerate(rows):
        ids[i, length - len(r) :] = r
        mask[i, length - len(r) :] = 1
    return ids, mask


def visual_index(input_ids: np.ndarray, image_token_id: int) -> np.ndarray:
    """[batch, tokens]: for an image token, its row in that prompt's vision features (in order of
    appearance, as the model's masked_scatter fills them); -1 for text and padding."""
    is_image = input_ids == image_token_id
    return np.where(is_image, np.cumsum(is_image, axis=1) - 1, -1).astype(np.int64)


def padded_positions(attention_mask: np.ndarray) -> np.ndarray:
    """[batch, tokens] 1-D rotary positions of left-padded prompts, as transformers' generate()
    makes them (count of real tokens so far - 1; padding 0): each prompt is positioned as if alone."""
    positions = np.cumsum(attention_mask, axis=1) - 1
    return np.where(attention_mask == 0, 0, positions).astype(np.int64)


class Preparation:
    """Image -> the vision graph's inputs, and the prefill's rotary positions, for one compiled
    stage (`VlmEntry`): one subclass per image processor / model family."""

    # The vision graph's outputs that the prefill takes (zero-padded to the longest in a batch).
    features: tuple[str, ...] = ("image_embeds",)

    def __init__(self, spec: VlmEntry):
        self.spec = spec
        self.table = normalisation_table(spec.mean, spec.std, spec.rescale)

    def tokens(self, grid_h: int, grid_w: int) -> int:
        """Language-model tokens of an image whose patch grid is grid_h x grid_w."""
        return (grid_h // self.spec.merge_size) * (grid_w // self.spec.merge_size)

    def normalised(self, rgb: np.ndarray) -> np.ndarray:
        """[3, H, W] float32: rescaled and normalised as the processor does."""
        return np.stack([self.table[c][rgb[..., c]] for c in range(3)])

    def patches(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The processor's pixel values for one image and its patch grid (rows, columns)."""
        raise NotImplementedError

    def vision_feeds(self, pixel_values: np.ndarray, grid: tuple[int, int]) -> dict[str, np.ndarray]:
        """The vision graph's inputs for one image (a leading batch axis of 1)."""
        raise NotImplementedError

    def positions(self, input_ids: np.ndarray, attention_mask: np.ndarray, grids: list[tuple[int, int]]) -> np.ndarray:
        """The prefill graph's `position_ids` for a left-padded batch holding these images."""
        raise NotImplementedError


PREPARATIONS = Registry("VLM image preparation (upgrade streetcascade to run it)", {
    "qwen2.5-vl": "streetcascade.runtime.qwen_vl:Qwen25Preparation",
    "qwen3-vl": "streetcascade.runtime.qwen_vl:Qwen3Preparation",
    "smolvlm": "streetcascade.runtime.smolvlm:SmolVlmPreparation",
}, unknown=EngineMismatch, unavailable=None)


def preparation_for(spec: VlmEntry) -> Preparation:
    return PREPARATIONS.get(spec.model)(spec)
