"""SmolVLM / Idefics3's host side without PyTorch or transformers: what the model's image
processor (Idefics3ImageProcessor / SmolVLMImageProcessor, PIL backend) does with image
splitting off, in numpy and Pillow, for the two graphs compiled by compile/models/smolvlm.py.

- `SmolVlmPreparation.patches`: the longest edge resized to the processor's `size`
  (`longest_edge`; aspect kept, an odd short side made even; at most 4096), then the image
  resized to `max_image_size` square (the single global image the model sees without
  splitting), both with the processor's filter (Lanczos in the published configs); x * rescale,
  (x - mean) / std (the shared lookup table: bit-identical); [3, side, side] float32.
- `positions`: the language model's 1-D rotary positions of a left-padded batch, as generate()
  makes them, so that an image judged in a batch gets what it gets alone.
The vision graph itself holds the patch embedding, the position ids of a full image, the SigLIP
encoder and the pixel-shuffle connector. Tested against transformers
(tests/runtime/test_smolvlm_host.py).
"""

from __future__ import annotations

from .vlm_host import Preparation, check_rgb, padded_positions, resize

MAX_IMAGE_SIZE = 4096  # the processor's cap on either side after the first resize


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """The processor's first resize (its `_resize_output_size_rescale_to_max_len` then
    `_resize_output_size_scale_below_upper_bound`): the longest side to `longest`, the other
    by the aspect ratio, rounded down and then made even; neither above 4096 nor below 1."""
    aspect = width / height
    if width >= height:
        width = longest
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


class SmolVlmPreparation(Preparation):
    """One global image of image_side x image_side pixels (do_image_splitting off)."""

    def patches(self, rgb):
        """[3, side, side] float32 as the processor's pixel_values of the image, and its patch grid."""
        check_rgb(rgb)
        s = self.spec
        if s.resize_longest_edge:  # the processor's do_resize
            rgb = resize(rgb, *longest_edge_size(rgb.shape[0], rgb.shape[1], s.resize_longest_edge), s.resample)
        x = self.normalised(resize(rgb, s.image_side, s.image_side, s.resample))
        side = s.image_side // s.patch_size
        return x, (side, side)

    def vision_feeds(self, pixel_values, grid):
        return {"pixel_values": pixel_values[None]}

    def positions(self, input_ids, attention_mask, grids):
        return padded_positions(attention_mask)
