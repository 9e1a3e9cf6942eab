"""What a vision-language judge stage is configured with (the `[stages.judge]` table; shared by
compile, the manifest and the runtime; no heavy imports).

A judge is a VLM asked one yes/no question about the image. It is compiled to a one-pass
scorer: the chat prompt is rendered and tokenised at compile time, the image's tokens are filled
in at run time, and one prefill pass returns the logits of the answer tokens at the last
position: p(yes) = the softmax mass of the "yes" tokens among the answer tokens. No decode loop.

    [[stages]]
    name = "judge"
    family = "qwen3-vl"              # or "qwen2.5-vl", "smolvlm"
    source = "Qwen/Qwen3-VL-2B-Instruct"
    input_size = 448                 # images are resized to about input_size**2 pixels (aspect kept)
    precision = "fp32"               # or "int8-dynamic"; "int4" with the INT4 weights of the onnxruntime target
    max_batch = 1

    [stages.judge]
    prompt = "Is there road work in this image? Answer yes or no."
    yes = ["yes", "Yes"]             # every variant that is one token (with and without a leading space) counts
    no = ["no", "No"]
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

DEFAULT_PROMPT = ("Is there road work in this image (traffic cones, barriers, excavation, road work signs, workers in high-visibility "
                  "clothing)? Answer yes or no.")

JudgePrecision = Literal["fp32", "fp16", "bf16", "int8-dynamic", "int8-static", "int4"]


class JudgeSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `[judge]` table of a VLM stage (families qwen2.5-vl, qwen3-vl, smolvlm)."""

    prompt: str = DEFAULT_PROMPT
    # A system message; "" = whatever the checkpoint's chat template does without one
    # (Qwen2.5-VL adds "You are a helpful assistant.", Qwen3-VL adds none).
    system: str = ""
    # Answer words. Each spelling that the tokenizer has as ONE token, as written and with a
    # leading space, becomes an answer token; at least one per side must exist.
    yes: list[str] = msgspec.field(default_factory=lambda: ["yes", "Yes"])
    no: list[str] = msgspec.field(default_factory=lambda: ["no", "No"])
    # Resolution (Qwen-VL): an image is resized (aspect ratio kept, sides multiples of patch x
    # merge, as the model's processor does) to between min_pixels and max_pixels pixels; 0 =
    # input_size**2. SmolVLM: its processor's max_image_size square, whatever these say.
    min_pixels: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_pixels: Annotated[int, msgspec.Meta(ge=0)] = 0
    # The rendered prompt (without the image's tokens) may not be longer than this.
    max_prompt_tokens: Annotated[int, msgspec.Meta(ge=8, le=8192)] = 256
    # The vision tower's precision. "fp32" by default: AWQ checkpoints quantize the language
    # model only, and the vision tower is a small share of the weights.
    vision_precision: JudgePrecision = "fp32"
    # SmolVLM / Idefics3: cut large images into crops as the processor's do_image_splitting does.
    # Not built: false runs the single global image (the processor with do_image_splitting=False).
    image_splitting: bool = False

    def __post_init__(self):
        if not self.prompt.strip():
            raise ValueError("prompt: empty")
        if not self.yes or not self.no:
            raise ValueError("yes / no: at least one answer word each")
        if set(self.yes) & set(self.no):
            raise ValueError(f"yes / no: {sorted(set(self.yes) & set(self.no))} on both sides")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"need min_pixels <= max_pixels, got {self.min_pixels} > {self.max_pixels}")

    def pixel_range(self, input_size: int) -> tuple[int, int]:
        area = input_size * input_size
        return (self.min_pixels or area, self.max_pixels or max(area, self.min_pixels))
