"""Families "qwen2.5-vl" and "qwen3-vl": Qwen-VL vision-language models (transformers'
`Qwen2_5_VLForConditionalGeneration` / `Qwen3VLForConditionalGeneration`, no remote code)
compiled to a one-pass yes/no judge (stage kind "vlm", runtime/vlm_stage.py):

- `vision`: one image's patches (the processor's normalised pixel_values, made by the runtime's
  numpy preparation, runtime/qwen_vl.py) + the grid-dependent inputs the model would compute
  from `grid_thw` with Python lengths (rotary position ids; Qwen2.5-VL's window permutation and
  window of each patch; Qwen3-VL's position-grid resampling) -> the image's language-model
  tokens ([1, tokens, D]) and, Qwen3-VL, its deepstack features ([1, layers, tokens, D]). The
  attention is the model's own weights and rotary code with an explicit mask: transformers'
  eager path splits the sequence by `cu_seqlens` lengths (tracing would freeze them), a
  block-diagonal mask of the windows is the same computation and exports cleanly.
- `prefill`: the prompt (token ids with the image's tokens filled in, left-padded), 3-D rotary
  positions, where each image token takes its feature row, the features -> the logits of the
  answer tokens at the last position only (the language-model head reduced to those rows) and
  the log-odds of yes against no. Qwen3-VL's deepstack features are added after the first
  decoder layers by a dense gather/add (the model's boolean-mask assignment exports to a graph
  ONNX Runtime cannot run).

The chat prompt is rendered with the checkpoint's own chat template and tokenised at compile
time; the answer tokens are looked up in its tokenizer; both go into the manifest (VlmEntry),
so the runtime needs neither transformers nor a tokenizer. What every VLM family shares (the
prompt, the prefill module, opening checkpoints, the whole-stage checks) is in
compile/models/vlm_common.py and vlm_check.py.

Parity: each graph against transformers' own modules on the same inputs (the vision graph
against the model's vision tower given only the grid, so the host-side window and position
code is checked too); then the whole compiled chain against transformers' full forward
(processor-made pixel values, the model's own get_rope_index) on sample images at their own
aspect ratios (`ExportableModel.finish`); lossy precisions pass the accuracy gate (yes/no
flips against the FP32 graphs).

`source`: a checkpoint folder, a hub id (downloaded at compile time), or `random:<preset>`
(placeholder weights: `tiny`, or the published shapes `qwen3-vl-2b`, `qwen2.5-vl-3b`, ...;
`-lmN` keeps N decoder layers, for benchmarks that would not fit in memory otherwise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streetcascade.config import StageConfig
from streetcascade.errors import CompileError
from streetcascade.manifest import GraphIO, TensorSpec, VlmEntry
from streetcascade.runtime.qwen_vl import smart_resize
from streetcascade.runtime.vlm_host import assemble
from streetcascade.vlm import JudgeSettings

from .base import GraphDecl
from .vlm_common import F32, I64, Opened, Prefill, Prompt, VlmFamily, chat_template, prefill_decl, render_prompt, token_ids, transformers_class, write_test_tokenizer

# Special tokens of the Qwen tokenizers (the test tokenizer has them too, with small ids).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                  "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


@dataclass(frozen=True)
class Variant:
    """What differs between the two model generations."""

    name: str  # family name
    model_type: str  # config.json model_type
    model_class: str
    config_class: str
    # Qwen's published chat template for the tests' checkpoint (a real checkpoint brings its own).
    test_template: str
    presets: dict  # random:<preset> -> {"vision": ..., "text": ...} of the published shapes; "tiny": the tests'
    processor: dict  # the published preprocessor_config.json values


QWEN2_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN3_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- macro render_content(content, do_vision_count) %}{%- if content is string %}{{- content }}{%- else %}"
    "{%- for item in content %}{%- if 'image' in item or 'image_url' in item or item.type == 'image' %}"
    "{%- if do_vision_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'video' in item or item.type == 'video' %}{%- if do_vision_count %}{%- set video_count.value = video_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item %}{{- item.text }}{%- endif %}{%- endfor %}{%- endif %}{%- endmacro %}"
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + render_content(messages[0].content, false) + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + render_content(message.content, true) + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' + render_content(message.content, false) + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

QWEN25_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, window_size=112,
                     fullatt_block_indexes=[7, 15, 23, 31], spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, hidden_act="silu")
QWEN25_ROPE = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}
QWEN3_ROPE = {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True, "rope_theta": 5e6}
QWEN25 = Variant(
    name="qwen2.5-vl", model_type="qwen2_5_vl", model_class="Qwen2_5_VLForConditionalGeneration", config_class="Qwen2_5_VLConfig",
    test_template=QWEN2_TEMPLATE,
    presets={
        "tiny": dict(vision=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14, window_size=112,
                                 fullatt_block_indexes=[1, 3], spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, initializer_range=0.2),
                     text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}, initializer_range=0.2)),
        # Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct config.json (the same vision tower, merged to the LM's width)
        "qwen2.5-vl-3b": dict(vision={**QWEN25_VISION, "out_hidden_size": 2048},
                              text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                                        vocab_size=151936, rope_parameters=QWEN25_ROPE)),
        "qwen2.5-vl-7b": dict(vision={**QWEN25_VISION, "out_hidden_size": 3584},
                              text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                        vocab_size=152064, rope_parameters=QWEN25_ROPE)),
    },
    processor=dict(patch_size=14, merge_size=2, temporal_patch_size=2, image_mean=[0.48145466, 0.4578275, 0.40821073],
                   image_std=[0.26862954, 0.26130258, 0.27577711], rescale_factor=1 / 255),
)
QWEN3 = Variant(
    name="qwen3-vl", model_type="qwen3_vl", model_class="Qwen3VLForConditionalGeneration", config_class="Qwen3VLConfig",
    test_template=QWEN3_TEMPLATE,
    presets={
        "tiny": dict(vision=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16, num_position_embeddings=64,
                                 deepstack_visual_indexes=[0, 1], spatial_merge_size=2, temporal_patch_size=2, initializer_range=0.2,
                                 hidden_act="gelu_pytorch_tanh"),
                     text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, head_dim=16, num_key_value_heads=2,
                               rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True, "rope_theta": 5e6},
                               initializer_range=0.2)),
        # Qwen/Qwen3-VL-2B-Instruct and -8B-Instruct config.json
        "qwen3-vl-2b": dict(vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048, patch_size=16,
                                        num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17], spatial_merge_size=2, temporal_patch_size=2,
                                        hidden_act="gelu_pytorch_tanh"),
                            text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16, head_dim=128,
                                      num_key_value_heads=8, vocab_size=151936, rope_parameters=QWEN3_ROPE)),
        "qwen3-vl-8b": dict(vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096, patch_size=16,
                                        num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24], spatial_merge_size=2, temporal_patch_size=2,
                                        hidden_act="gelu_pytorch_tanh"),
                            text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, head_dim=128,
                                      num_key_value_heads=8, vocab_size=151936, rope_parameters=QWEN3_ROPE)),
    },
    processor=dict(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], rescale_factor=1 / 255),
)


# ------------------------------------------------------------------------------- graphs


def vision_attention(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None, rotary) -> torch.Tensor:
    """A vision block's attention (its own qkv / proj weights and rotary code) over the whole
    sequence with an explicit mask, where transformers' eager path splits by cu_seqlens."""
    n = x.shape[0]
    q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = rotary(q, k, cos, sin)
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
    return attn.proj(out[0].transpose(0, 1).reshape(n, -1))


class Qwen25Vision(nn.Module):
    """Qwen2.5-VL's vision tower + merger: window attention as a block-diagonal mask."""

    def __init__(self, visual):
        super().__init__()
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

        self.visual = visual
        self.rotary = apply_rotary_pos_emb_vision
        self.unit = visual.spatial_merge_unit
        self.full = set(visual.fullatt_block_indexes)

    def forward(self, pixel_values, position_ids, window_index, window_ids):
        v = self.visual
        order = window_index[0]
        h = v.patch_embed(pixel_values[0])
        n = h.shape[0]

        def by_window(t):  # the model's permute_input_for_window_attn
            return t.reshape(n // self.unit, self.unit, -1)[order].reshape(n, -1)

        h = by_window(h)
        cos, sin = v.rotary_pos_emb(h, position_ids[0])
        cos, sin = by_window(cos), by_window(sin)
        ids = window_ids[0]
        same_window = (ids[:, None] == ids[None, :])[None, None]
        for i, block in enumerate(v.blocks):
            h = h + vision_attention(block.attn, block.norm1(h), cos, sin, None if i in self.full else same_window, self.rotary)
            h = h + block.mlp(block.norm2(h))
        return v.merger(h)[torch.argsort(order)][None]


class Qwen3Vision(nn.Module):
    """Qwen3-VL's vision tower + merger + deepstack mergers (features of early blocks)."""

    def __init__(self, visual):
        super().__init__()
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

        self.visual = visual
        self.rotary = apply_rotary_pos_emb_vision
        self.deep = list(visual.deepstack_visual_indexes)

    def forward(self, pixel_values, position_ids, interp_indices, interp_weights):
        v = self.visual
        h = v.patch_embed(pixel_values[0])
        h = h + (v.pos_embed(interp_indices[0]) * interp_weights[0][:, :, None]).sum(1)
        cos, sin = v.rotary_pos_emb(h, position_ids[0])
        features = []
        for i, block in enumerate(v.blocks):
            h = h + vision_attention(block.attn, block.norm1(h), cos, sin, None, self.rotary)
            h = h + block.mlp(block.norm2(h))
            if i in self.deep:
                features.append(v.deepstack_merger_list[self.deep.index(i)](h))
        return v.merger(h)[None], torch.stack(features)[None]



# ------------------------------------------------------------------------------- references


def vision_reference(model, spec: VlmEntry):
    """The model's vision tower given only the grid (it computes its windows, rotary positions and
    position grid itself, so the runtime's numpy versions are checked too)."""

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pos = feeds["position_ids"][0]
        grid = torch.tensor([[1, int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1]])
        with torch.no_grad():
            out = model.model.visual(torch.from_numpy(feeds["pixel_values"][0]), grid_thw=grid)
        result = {"image_embeds": out.pooler_output[None].numpy()}
        if spec.deepstack_layers:
            result["deepstack"] = torch.stack(list(out.deepstack_features))[None].numpy()
        return result

    return run


def transformers_inputs(model, spec: VlmEntry, rgb: np.ndarray) -> dict[str, torch.Tensor]:
    """The model's forward / generate() inputs for one image: its image processor's pixel values
    and grid (PIL backend, the stage's settings), the compiled prompt with the image's tokens."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}, patch_size=spec.patch_size,
                                         merge_size=spec.merge_size, temporal_patch_size=spec.temporal_patch_size, image_mean=spec.mean,
                                         image_std=spec.std, rescale_factor=spec.rescale)
    px = processor(images=[rgb], return_tensors="pt")
    grid = px["image_grid_thw"]
    tokens = int(grid.prod()) // spec.merge_size**2
    ids = torch.from_numpy(assemble(spec.prompt_ids, spec.image_token_id, tokens))[None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": px["pixel_values"], "image_grid_thw": grid,
            "mm_token_type_ids": (ids == spec.image_token_id).long()}


# ------------------------------------------------------------------------------- the family


class QwenVlFamily(VlmFamily):
    def __init__(self, variant: Variant):
        self.variant = variant
        self.name = variant.name
        self.model_classes = {variant.model_type: variant.model_class}
        self.presets = variant.presets
        self.processor_defaults = variant.processor
        self.vision_attention_fusable = variant is not QWEN25  # Qwen2.5-VL: window attention, a block-diagonal mask

    def write_tokenizer(self, directory: Path) -> None:
        write_test_tokenizer(directory, self.variant.test_template, SPECIAL_TOKENS, {
            "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
            "errors": "replace", "add_prefix_space": False, "clean_up_tokenization_spaces": False, "split_special_tokens": False})

    def build_config(self, shape: dict, tokenizer_dir: str):
        ids = token_ids(tokenizer_dir, SPECIAL_TOKENS)
        text = {"vocab_size": ids["vocab"], "max_position_embeddings": 32768, "bos_token_id": ids["<|endoftext|>"],
                "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], **shape["text"]}
        return transformers_class(self.variant.config_class)(
            vision_config=dict(shape["vision"]), text_config=text, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)

    def test_processor_files(self, directory: Path, shape: dict) -> None:
        proc = self.processor_defaults
        size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280} if self.variant is QWEN25 else {"shortest_edge": 65536, "longest_edge": 16777216}
        (directory / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor" if self.variant is QWEN25 else "Qwen3VLProcessor",
            "size": size, "patch_size": proc["patch_size"], "temporal_patch_size": proc["temporal_patch_size"], "merge_size": proc["merge_size"],
            "image_mean": proc["image_mean"], "image_std": proc["image_std"], "do_rescale": True, "do_normalize": True, "do_resize": True,
            "do_convert_rgb": True, "resample": 3, "rescale_factor": proc["rescale_factor"]}))

    # --- declaration

    def spec(self, stage: StageConfig, opened: Opened) -> tuple[VlmEntry, Prompt]:
        settings = stage.judge or JudgeSettings()
        if settings.image_splitting:
            raise CompileError(f"stage {stage.name}: [stages.judge] image_splitting: {self.name} does not split images "
                               "(its resolution is judge.min_pixels / max_pixels)")
        config = opened.config
        prompt = render_prompt(self.tokenizer(stage, opened), chat_template(opened.directory), settings, int(config.image_token_id))
        proc = self.processor_config(opened.directory)
        vc = config.vision_config
        for key, want in (("patch_size", vc.patch_size), ("merge_size", vc.spatial_merge_size), ("temporal_patch_size", vc.temporal_patch_size)):
            if int(proc[key]) != int(want):
                raise CompileError(f"{opened.directory}: preprocessor {key} {proc[key]} differs from the model's {want}")
        low, high = settings.pixel_range(stage.input_size)
        factor = vc.patch_size * vc.spatial_merge_size
        h, w = smart_resize(stage.input_size, stage.input_size, factor, low, high)
        entry = VlmEntry(
            model=self.name, prompt=settings.prompt, prompt_ids=prompt.ids, image_token_id=int(config.image_token_id),
            answer_tokens=prompt.answer_tokens, answer_ids=prompt.answer_ids, answer_yes=prompt.answer_yes,
            patch_size=int(vc.patch_size), merge_size=int(vc.spatial_merge_size), temporal_patch_size=int(vc.temporal_patch_size),
            min_pixels=low, max_pixels=high, mean=[float(x) for x in proc["image_mean"]], std=[float(x) for x in proc["image_std"]],
            rescale=float(proc["rescale_factor"]),
            window_size=int(getattr(vc, "window_size", 0) or 0),
            pos_embed_side=int(getattr(vc, "num_position_embeddings", 0) ** 0.5) if getattr(vc, "num_position_embeddings", 0) else 0,
            deepstack_layers=len(getattr(vc, "deepstack_visual_indexes", []) or []),
            vision_tokens=(h // factor) * (w // factor), max_tokens=len(prompt.ids) - 1 + self._max_tokens(factor, high))
        return entry, prompt

    @staticmethod
    def _max_tokens(factor: int, max_pixels: int) -> int:
        """Tokens of the largest image the resize allows (any aspect ratio): area / factor**2."""
        return max(1, max_pixels // (factor * factor))

    def declare(self, stage: StageConfig, opened: Opened, spec: VlmEntry) -> list[GraphDecl]:
        d = int(opened.config.text_config.hidden_size)
        per_patch = 3 * spec.temporal_patch_size * spec.patch_size * spec.patch_size
        tokens_max = self._max_tokens(spec.patch_size * spec.merge_size, spec.max_pixels)
        patches_max = tokens_max * spec.merge_size * spec.merge_size
        vision_in = [TensorSpec("pixel_values", ["batch", "patches", per_patch], F32), TensorSpec("position_ids", ["batch", "patches", 2], I64)]
        features = []
        if self.variant is QWEN25:
            vision_in += [TensorSpec("window_index", ["batch", "tokens"], I64), TensorSpec("window_ids", ["batch", "patches"], I64)]
        else:
            vision_in += [TensorSpec("interp_indices", ["batch", "patches", 4], I64), TensorSpec("interp_weights", ["batch", "patches", 4], F32)]
            features = [TensorSpec("deepstack", ["batch", spec.deepstack_layers, "tokens", d], F32)]
        settings = stage.judge or JudgeSettings()
        vision = GraphDecl("vision", GraphIO(vision_in, [TensorSpec("image_embeds", ["batch", "tokens", d], F32), *features], 1,
                                             {"patches": patches_max, "tokens": tokens_max}), parity="relative",
                           precision=settings.vision_precision, attention_fusable=self.vision_attention_fusable,
                           preprocessing=f"{self.name} image processor in numpy (runtime/qwen_vl.py): bicubic resize to {spec.min_pixels}..{spec.max_pixels} "
                                         f"pixels in multiples of {spec.patch_size * spec.merge_size}, normalised, {spec.patch_size}px patches; "
                                         f"{spec.vision_tokens} tokens at {stage.input_size}x{stage.input_size}")
        return [vision, prefill_decl(stage, spec, d, tokens_max, [3], features)]

    # --- modules and references

    def modules(self, model, spec: VlmEntry):
        vision = (Qwen25Vision if self.variant is QWEN25 else Qwen3Vision)(model.model.visual)
        return vision, Prefill(model.model.language_model, model.lm_head, spec.answer_ids, spec.answer_yes, multimodal_rope=True,
                               deepstack_layers=spec.deepstack_layers)

    vision_reference = staticmethod(vision_reference)
    transformers_inputs = staticmethod(transformers_inputs)


QWEN25_FAMILY = QwenVlFamily(QWEN25)
QWEN3_FAMILY = QwenVlFamily(QWEN3)
