"""Qwen-VL's host side without PyTorch or transformers: what the model's processor and the
Python parts of its forward do, in numpy, for the two graphs compiled by
compile/models/qwen_vl.py.

- `QwenPreparation.patches`: the image processor (Qwen2VLImageProcessor): resize with Pillow's
  bicubic filter to the `smart_resize` size (aspect kept, sides multiples of patch x merge,
  area within min..max pixels), x * rescale then (x - mean) / std (one lookup table per channel,
  computed with the processor's float64 -> float32 steps: bit-identical), cut into patches in
  merge-block order, each repeated over the temporal patch.
- the vision graph's grid-dependent inputs, which the model computes from `grid_thw` with
  Python lengths (what tracing would freeze): the 2-D rotary position ids; Qwen2.5-VL's window
  permutation and window of every patch (the graph builds a block-diagonal mask from it);
  Qwen3-VL's bilinear resampling of its learned position grid (indices and weights).
- `rope_index`: the 3-D multimodal rotary positions of the prompt (get_rope_index).
The prompt's image span, left padding, the visual index and the normalisation table are shared
by every family (runtime/vlm_host.py).
Each function is tested against its transformers counterpart (tests/runtime/test_qwen_vl_host.py).
"""

from __future__ import annotations

import math

import numpy as np

from streetcascade.errors import BadInput

from .vlm_host import Preparation, check_rgb, resize

MAX_ASPECT = 200  # the processor refuses more elongated images


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The processor's target size: sides multiples of `factor`, area within the bounds, aspect
    ratio kept as closely as possible."""
    if height < 1 or width < 1:
        raise BadInput(f"image of {width}x{height} pixels")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise BadInput(f"image of {width}x{height} pixels: aspect ratio over {MAX_ASPECT}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def vision_position_ids(grid_h: int, grid_w: int, merge: int) -> np.ndarray:
    """[grid_h * grid_w, 2] (row, column) of every patch, in merge-block order."""
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    blocks = (grid_h // merge, merge, grid_w // merge, merge)
    rows = rows.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1)
    return np.stack([rows, cols], axis=-1).astype(np.int64)


def window_index(grid_h: int, grid_w: int, merge: int, window_size: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen2.5-VL's window attention: the order of merged tokens window by window, and the
    cumulative patch counts of the windows in that order (get_vision_window_index)."""
    side = window_size // merge // patch
    llm_h, llm_w = grid_h // merge, grid_w // merge
    pad_h, pad_w = side - llm_h % side, side - llm_w % side
    n_h, n_w = (llm_h + pad_h) // side, (llm_w + pad_w) // side
    padded = np.full((llm_h + pad_h, llm_w + pad_w), -1, np.int64)
    padded[:llm_h, :llm_w] = np.arange(llm_h * llm_w).reshape(llm_h, llm_w)
    windows = padded.reshape(n_h, side, n_w, side).transpose(0, 2, 1, 3).reshape(n_h * n_w, side * side)
    counts = (windows >= 0).sum(axis=1)
    order = windows[windows >= 0]
    cu = np.concatenate([[0], np.cumsum(counts[counts > 0]) * merge * merge])
    return order.astype(np.int64), cu.astype(np.int64)


def interpolation(grid_h: int, grid_w: int, side: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen3-VL: bilinear (align_corners) resampling of the side x side learned position grid
    to grid_h x grid_w, per patch in merge-block order: 4 indices into the flattened grid and
    their weights (get_vision_interpolation_indices_and_weights)."""
    within = np.arange(grid_h * grid_w)
    blocks_w = grid_w // merge
    row = (within // (merge * merge * blocks_w)) * merge + (within // merge) % merge
    col = ((within // (merge * merge)) % blocks_w) * merge + within % merge

    def axis(index: np.ndarray, size: int):
        src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
        floor = np.floor(src)
        taps = floor.astype(np.int64)[:, None] + np.arange(2)
        weights = np.clip(1.0 - np.abs(src[:, None] - floor[:, None] - np.arange(2, dtype=np.float32)), 0.0, None)
        return np.clip(taps, 0, side - 1), weights.astype(np.float32)

    h_taps, h_weights = axis(row, grid_h)
    w_taps, w_weights = axis(col, grid_w)
    indices = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    weights = (h_weights[:, :, None] * w_weights[:, None, :]).reshape(-1, 4)
    return indices.astype(np.int64), weights.astype(np.float32)


def rope_index(input_ids: np.ndarray, attention_mask: np.ndarray, image_token_id: int, grids: list[tuple[int, int]], merge: int) -> np.ndarray:
    """[batch, 3, tokens] multimodal rotary positions (temporal, height, width) of a batch of
    prompts with images (get_rope_index for still images): text counts up on all three axes, an
    image's tokens take their grid position offset by the text before them, and the text after
    an image continues from max(rows, columns). Padding (mask 0) gets 0. `grids` lists each
    image's (grid_h, grid_w) in patches, in the order the images appear."""
    batch, length = input_ids.shape
    out = np.zeros((batch, 3, length), np.int64)
    images = iter(grids)
    for row in range(batch):
        keep = attention_mask[row].astype(bool)
        ids = input_ids[row][keep]
        is_image = ids == image_token_id
        # Runs of text / image tokens, as the model's itertools.groupby over token types.
        edges = np.flatnonzero(np.diff(is_image.astype(np.int8))) + 1
        starts, ends = np.concatenate([[0], edges]), np.concatenate([edges, [len(ids)]])
        parts, current = [], 0
        for start, end in zip(starts, ends):
            if not is_image[start]:
                parts.append(np.broadcast_to(np.arange(end - start) + current, (3, end - start)))
                current += end - start
                continue
            try:
                grid_h, grid_w = next(images)
            except StopIteration:
                raise BadInput("more image token runs in the prompts than images") from None
            llm_h, llm_w = grid_h // merge, grid_w // merge
            if llm_h * llm_w != end - start:
                raise BadInput(f"an image of {llm_h}x{llm_w} tokens where the prompt holds {end - start} image tokens")
            rows, cols = np.meshgrid(np.arange(llm_h), np.arange(llm_w), indexing="ij")
            parts.append(np.stack([np.full(llm_h * llm_w, current), rows.reshape(-1) + current, cols.reshape(-1) + current]))
            current += max(grid_h, grid_w) // merge
        if parts:
            out[row][:, keep] = np.concatenate(parts, axis=1)
    return out


class QwenPreparation(Preparation):
    """Qwen-VL's image processor (Qwen2VLImageProcessor): smart_resize, bicubic, patches in
    merge-block order; the prefill's 3-D rotary positions (get_rope_index)."""

    def __init__(self, spec):
        super().__init__(spec)
        self.factor = spec.patch_size * spec.merge_size

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(grid_h, grid_w) in patches for an image of this size."""
        h, w = smart_resize(height, width, self.factor, self.spec.min_pixels, self.spec.max_pixels)
        return h // self.spec.patch_size, w // self.spec.patch_size

    def patches(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """[patches, 3 * temporal * patch * patch] float32 as the processor's pixel_values, and
        the grid."""
        check_rgb(rgb)
        s = self.spec
        grid_h, grid_w = self.grid(rgb.shape[0], rgb.shape[1])
        x = self.normalised(resize(rgb, grid_h * s.patch_size, grid_w * s.patch_size, "bicubic"))
        p, m, t = s.patch_size, s.merge_size, s.temporal_patch_size
        x = x.reshape(3, grid_h // m, m, p, grid_w // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
        x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
        return np.ascontiguousarray(x.reshape(grid_h * grid_w, 3 * t * p * p), dtype=np.float32), (grid_h, grid_w)

    def positions(self, input_ids, attention_mask, grids):
        return rope_index(input_ids, attention_mask, self.spec.image_token_id, grids, self.spec.merge_size)


class Qwen25Preparation(QwenPreparation):
    """Qwen2.5-VL: window attention (window of every patch, after the window permutation)."""

    def vision_feeds(self, pixel_values, grid):
        s = self.spec
        order, cu = window_index(*grid, s.merge_size, s.window_size, s.patch_size)
        windows = np.repeat(np.arange(len(cu) - 1), np.diff(cu))
        return {"pixel_values": pixel_values[None], "position_ids": vision_position_ids(*grid, s.merge_size)[None],
                "window_index": order[None], "window_ids": windows[None].astype(np.int64)}


class Qwen3Preparation(QwenPreparation):
    """Qwen3-VL: the learned position grid resampled to the image's grid; deepstack features."""

    features = ("image_embeds", "deepstack")

    def vision_feeds(self, pixel_values, grid):
        s = self.spec
        indices, weights = interpolation(*grid, s.pos_embed_side, s.merge_size)
        return {"pixel_values": pixel_values[None], "position_ids": vision_position_ids(*grid, s.merge_size)[None],
                "interp_indices": indices[None], "interp_weights": weights[None]}
