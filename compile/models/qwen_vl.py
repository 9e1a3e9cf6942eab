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
so the runtime needs neither transformers nor a tokenizer.

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
import logging
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from streetcascade.config import StageConfig
from streetcascade.errors import CompileError
from streetcascade.manifest import GraphIO, TensorSpec, VlmEntry
from streetcascade.vlm import JudgeSettings

from .base import ExportableGraph, ExportableModel, GraphDecl, ModelFamily, fetch_hub_snapshot, hash_checkpoint, hash_text, load_or_fail, resolve_source

log = logging.getLogger(__name__)

F32, I64 = "float32", "int64"
# Special tokens of the Qwen tokenizers (the test tokenizer has them too, with small ids).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                  "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")
EXAMPLE_PROMPT_TOKENS = 48  # text around the image in the memory measurement's example prompt


@dataclass(frozen=True)
class Variant:
    """What differs between the two model generations."""

    name: str  # family name
    model_type: str  # config.json model_type
    model_class: str
    config_class: str
    # Qwen's published chat template for the tests' checkpoint (a real checkpoint brings its own).
    test_template: str
    test_vision: dict
    test_text: dict
    presets: dict  # random:<preset> -> (vision config, text config) of the published shapes


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

QWEN25 = Variant(
    name="qwen2.5-vl", model_type="qwen2_5_vl", model_class="Qwen2_5_VLForConditionalGeneration", config_class="Qwen2_5_VLConfig",
    test_template=QWEN2_TEMPLATE,
    test_vision=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14, window_size=112,
                     fullatt_block_indexes=[1, 3], spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, initializer_range=0.2),
    test_text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}, initializer_range=0.2),
    presets={
        # Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct config.json
        "qwen2.5-vl-3b": (dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14, window_size=112,
                               fullatt_block_indexes=[7, 15, 23, 31], spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, hidden_act="silu"),
                          dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                               vocab_size=151936, rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6})),
        "qwen2.5-vl-7b": (dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14, window_size=112,
                               fullatt_block_indexes=[7, 15, 23, 31], spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, hidden_act="silu"),
                          dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                               vocab_size=152064, rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6})),
    },
)
QWEN3 = Variant(
    name="qwen3-vl", model_type="qwen3_vl", model_class="Qwen3VLForConditionalGeneration", config_class="Qwen3VLConfig",
    test_template=QWEN3_TEMPLATE,
    test_vision=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16, num_position_embeddings=64,
                     deepstack_visual_indexes=[0, 1], spatial_merge_size=2, temporal_patch_size=2, initializer_range=0.2, hidden_act="gelu_pytorch_tanh"),
    test_text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, head_dim=16, num_key_value_heads=2,
                   rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True, "rope_theta": 5e6},
                   initializer_range=0.2),
    presets={
        # Qwen/Qwen3-VL-2B-Instruct and -8B-Instruct config.json
        "qwen3-vl-2b": (dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048, patch_size=16,
                             num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17], spatial_merge_size=2, temporal_patch_size=2,
                             hidden_act="gelu_pytorch_tanh"),
                        dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16, head_dim=128, num_key_value_heads=8,
                             vocab_size=151936, rope_parameters={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True,
                                                                 "rope_theta": 5e6})),
        "qwen3-vl-8b": (dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096, patch_size=16,
                             num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24], spatial_merge_size=2, temporal_patch_size=2,
                             hidden_act="gelu_pytorch_tanh"),
                        dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, head_dim=128, num_key_value_heads=8,
                             vocab_size=151936, rope_parameters={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True,
                                                                 "rope_theta": 5e6})),
    },
)
VARIANTS = {v.name: v for v in (QWEN25, QWEN3)}
PROCESSOR_DEFAULTS = {  # the published preprocessor_config.json values
    "qwen2.5-vl": dict(patch_size=14, merge_size=2, temporal_patch_size=2, image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711], rescale_factor=1 / 255),
    "qwen3-vl": dict(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], rescale_factor=1 / 255),
}


# ------------------------------------------------------------------------------- tokenizer


def write_test_tokenizer(directory: Path, template: str) -> None:
    """A byte-level BPE tokenizer with Qwen's special tokens, trained on the spot (so the answer
    words and the prompt are short), saved as a Qwen2Tokenizer checkpoint with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["system user assistant You are a helpful assistant.", "Is there road work in this image? Answer yes or no.",
              "traffic cones, barriers, excavation, road work signs, workers in high-visibility clothing",
              "yes no Yes No YES NO", " yes", " no", " Yes", " No", "Yes", "No"] * 30
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "errors": "replace", "add_prefix_space": False, "clean_up_tokenization_spaces": False, "split_special_tokens": False}))
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": template}))


def chat_template(directory: str | Path) -> str:
    """The checkpoint's chat template: chat_template.jinja, chat_template.json or the tokenizer's."""
    root = Path(directory)
    for name in CHAT_TEMPLATE_FILES:
        path = root / name
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        if name.endswith(".jinja"):
            return text
        try:
            template = json.loads(text).get("chat_template")
        except ValueError as exc:
            raise CompileError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(template, list):  # named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if template:
            return template
    raise CompileError(f"{directory}: no chat template ({', '.join(CHAT_TEMPLATE_FILES)}); the prompt is rendered with the checkpoint's own template")


@dataclass(frozen=True)
class Prompt:
    text: str
    ids: list[int]
    answer_tokens: list[str]
    answer_ids: list[int]
    answer_yes: list[bool]


def render_prompt(tokenizer, template: str, settings: JudgeSettings, image_token_id: int) -> Prompt:
    """The chat prompt (one image, then the question; the assistant's turn opened) as token ids,
    exactly as the model's processor tokenises it, and the answer tokens."""
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": settings.prompt}]}
    messages = ([{"role": "system", "content": settings.system}] if settings.system else []) + [user]
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
    except Exception as exc:
        raise CompileError(f"the chat template failed to render the prompt: {type(exc).__name__}: {exc}") from None
    ids = [int(i) for i in tokenizer(text)["input_ids"]]
    placeholders = sum(1 for i in ids if i == image_token_id)
    if placeholders != 1:
        raise CompileError(f"the rendered prompt holds {placeholders} image placeholder tokens (id {image_token_id}), one expected: {text!r}")
    if len(ids) > settings.max_prompt_tokens:
        raise CompileError(f"the rendered prompt is {len(ids)} tokens, over judge.max_prompt_tokens = {settings.max_prompt_tokens}")
    tokens, answer_ids, yes = [], [], []
    missing = []
    for side, words in ((True, settings.yes), (False, settings.no)):
        found = 0
        for word in words:
            for spelling in (word, " " + word):
                got = tokenizer.encode(spelling, add_special_tokens=False)
                if len(got) != 1 or int(got[0]) in answer_ids:
                    continue
                answer_ids.append(int(got[0]))
                tokens.append(tokenizer.convert_ids_to_tokens(int(got[0])))
                yes.append(side)
                found += 1
        if not found:
            missing.append(f"{'yes' if side else 'no'} words {words}")
    if missing:
        raise CompileError(f"no single-token spelling of the {' or '.join(missing)} in this tokenizer (as written or with a leading space); "
                           "set [stages.judge] yes / no to words the tokenizer has as one token")
    return Prompt(text, ids, tokens, answer_ids, yes)


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


def log_sum_exp(logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(logits[:, columns]))), written out (max, exp, sum, log): OpenVINO's ONNX
    reader drops the axes of ReduceLogSumExp (a [batch] result came back as a scalar)."""
    x = logits.masked_fill(~columns, float("-inf"))
    top = x.max(dim=-1).values
    return top + torch.log(torch.exp(x - top.unsqueeze(-1)).sum(dim=-1))


class Prefill(nn.Module):
    """The language model over the whole prompt, the head applied to the last position for the
    answer tokens only."""

    def __init__(self, model, answer_ids: list[int], answer_yes: list[bool], deepstack_layers: int):
        super().__init__()
        self.lm = model.model.language_model
        self.deepstack_layers = deepstack_layers
        # The head's rows of the answer tokens: [answers, hidden] instead of [vocab, hidden].
        self.register_buffer("head", model.lm_head.weight[list(answer_ids)].detach().clone())
        self.register_buffer("yes", torch.tensor(answer_yes, dtype=torch.bool))

    def forward(self, input_ids, attention_mask, position_ids, visual_index, image_embeds, *deepstack):
        lm = self.lm
        x = lm.embed_tokens(input_ids)
        is_image = (visual_index >= 0).unsqueeze(-1)
        rows = visual_index.clamp(min=0).unsqueeze(-1).expand(-1, -1, x.shape[-1])
        x = torch.where(is_image, torch.gather(image_embeds, 1, rows), x)
        cos, sin = lm.rotary_emb(x, position_ids.transpose(0, 1))
        positions = torch.arange(x.shape[1], device=x.device)
        allowed = (positions[None, :] <= positions[:, None])[None] & attention_mask.bool()[:, None, :]
        mask = torch.where(allowed, 0.0, torch.finfo(x.dtype).min).unsqueeze(1)
        for i, layer in enumerate(lm.layers):
            x = layer(x, attention_mask=mask, position_embeddings=(cos, sin))
            if i < self.deepstack_layers:  # the model's hidden[visual_mask] += features[i], densely
                x = x + torch.where(is_image, torch.gather(deepstack[0][:, i], 1, rows), 0.0)
        logits = lm.norm(x[:, -1]) @ self.head.T
        return logits, log_sum_exp(logits, self.yes) - log_sum_exp(logits, ~self.yes)


# ------------------------------------------------------------------------------- the family


@dataclass
class Opened:
    model: object | None  # loaded lazily (graphs() needs only the config and tokenizer)
    config: object
    directory: str  # tokenizer, chat template, processor config
    source_sha256: str
    placeholder: bool
    awq: bool = False


def _transformers(name: str):
    import transformers

    return getattr(transformers, name)


PRESET = re.compile(r"^(?P<shape>tiny|[a-z0-9.-]+?)(?:-lm(?P<layers>\d+))?$")


@lru_cache(maxsize=8)
def _preset_tokenizer(variant: str) -> str:
    """A generated tokenizer for random presets (kept for the process's life)."""
    directory = Path(tempfile.mkdtemp(prefix=f"streetcascade-{variant}-tokenizer-"))
    write_test_tokenizer(directory, VARIANTS[variant].test_template)
    return str(directory)


def _special_ids(directory: str) -> dict[str, int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in SPECIAL_TOKENS}
    return {"vocab": tok.get_vocab_size(), **ids}


def build_config(variant: Variant, vision: dict, text: dict, tokenizer_dir: str, vocab_size: int | None = None):
    ids = _special_ids(tokenizer_dir)
    text = {"vocab_size": vocab_size or ids["vocab"], "max_position_embeddings": 32768, "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], **text}
    return _transformers(variant.config_class)(
        vision_config=dict(vision), text_config=text, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)


class QwenVlFamily(ModelFamily):
    kind = "vlm"

    def __init__(self, variant: Variant):
        self.variant = variant
        self.name = variant.name

    # --- opening

    def open(self, stage: StageConfig, config_path: Path, weights: bool) -> Opened:
        source = resolve_source(stage.source, config_path)
        if source.kind == "random":
            return self._random(stage, source.value, weights)
        directory = fetch_hub_snapshot(source.value) if source.kind == "hub" else source.value
        config = load_or_fail("config", stage.source, lambda: _transformers("AutoConfig").from_pretrained(directory))
        if config.model_type != self.variant.model_type:
            raise CompileError(f"checkpoint {stage.source!r} is a {config.model_type!r} model; family {self.name} takes {self.variant.model_type!r} "
                               f"(family {next((v.name for v in VARIANTS.values() if v.model_type == config.model_type), '?')})")
        quant = getattr(config, "quantization_config", None) or {}
        quant = quant if isinstance(quant, dict) else quant.to_dict()
        awq = str(quant.get("quant_method", "")).lower() == "awq"
        if quant and not awq:
            raise CompileError(f"checkpoint {stage.source!r}: quantization {quant.get('quant_method')!r} is not supported "
                               "(a float checkpoint, or an AutoAWQ one)")
        model = None
        if weights:
            model = load_or_fail("weights", stage.source, lambda: self._load_weights(directory, config, awq))
        return Opened(model, config, directory, hash_checkpoint(directory), placeholder=False, awq=awq)

    def _load_weights(self, directory: str, config, awq: bool):
        """The float model. An AutoAWQ checkpoint loads as its exact dequantized float32 copy
        (compile/int4.py `float_checkpoint`): with precision "int4" the exported MatMuls that
        carry those weights are then replaced by the checkpoint's own 4-bit codes."""
        from ..int4 import float_checkpoint

        weights = float_checkpoint(directory) if awq else directory
        return _transformers(self.variant.model_class).from_pretrained(str(weights), dtype=torch.float32).eval()

    def _random(self, stage: StageConfig, preset: str, weights: bool) -> Opened:
        m = PRESET.match(preset)
        shape = m.group("shape") if m else preset
        known = ["tiny", *self.variant.presets]
        if shape not in known:
            raise CompileError(f"random:{preset}: unknown preset for {self.name}; known: {', '.join(known)} (optionally -lmN: N decoder layers)")
        tokenizer_dir = _preset_tokenizer(self.variant.name)
        if shape == "tiny":
            vision, text = self.variant.test_vision, self.variant.test_text
        else:
            vision, text = self.variant.presets[shape]
        if m.group("layers"):
            text = {**text, "num_hidden_layers": int(m.group("layers"))}
        config = build_config(self.variant, vision, text, tokenizer_dir, text.get("vocab_size"))
        model = None
        if weights:
            torch.manual_seed(stage.seed)
            model = _transformers(self.variant.model_class)(config).eval()
        return Opened(model, config, tokenizer_dir, hash_text(f"{stage.source}:{stage.seed}"), placeholder=True)

    # --- declaration

    def spec(self, stage: StageConfig, opened: Opened) -> tuple[VlmEntry, Prompt]:
        settings = stage.judge or JudgeSettings()
        tokenizer = load_or_fail("tokenizer", stage.source, lambda: _transformers("AutoTokenizer").from_pretrained(opened.directory))
        config = opened.config
        prompt = render_prompt(tokenizer, chat_template(opened.directory), settings, int(config.image_token_id))
        proc = self._processor_config(opened.directory)
        vc = config.vision_config
        for key, want in (("patch_size", vc.patch_size), ("merge_size", vc.spatial_merge_size), ("temporal_patch_size", vc.temporal_patch_size)):
            if int(proc[key]) != int(want):
                raise CompileError(f"{opened.directory}: preprocessor {key} {proc[key]} differs from the model's {want}")
        low, high = settings.pixel_range(stage.input_size)
        factor = vc.patch_size * vc.spatial_merge_size
        tokens = self._tokens(stage.input_size, stage.input_size, factor, low, high)
        entry = VlmEntry(
            model=self.name, prompt=settings.prompt, prompt_ids=prompt.ids, image_token_id=int(config.image_token_id),
            answer_tokens=prompt.answer_tokens, answer_ids=prompt.answer_ids, answer_yes=prompt.answer_yes,
            patch_size=int(vc.patch_size), merge_size=int(vc.spatial_merge_size), temporal_patch_size=int(vc.temporal_patch_size),
            min_pixels=low, max_pixels=high, mean=[float(x) for x in proc["image_mean"]], std=[float(x) for x in proc["image_std"]],
            rescale=float(proc["rescale_factor"]),
            window_size=int(getattr(vc, "window_size", 0) or 0),
            pos_embed_side=int(getattr(vc, "num_position_embeddings", 0) ** 0.5) if getattr(vc, "num_position_embeddings", 0) else 0,
            deepstack_layers=len(getattr(vc, "deepstack_visual_indexes", []) or []),
            vision_tokens=tokens, max_tokens=len(prompt.ids) - 1 + self._max_tokens(factor, high))
        return entry, prompt

    @staticmethod
    def _tokens(height: int, width: int, factor: int, low: int, high: int) -> int:
        from streetcascade.runtime.qwen_vl import smart_resize

        h, w = smart_resize(height, width, factor, low, high)
        return (h // factor) * (w // factor)

    @staticmethod
    def _max_tokens(factor: int, max_pixels: int) -> int:
        """Tokens of the largest image the resize allows (any aspect ratio): area / factor**2."""
        return max(1, max_pixels // (factor * factor))

    def _processor_config(self, directory: str) -> dict:
        """The image processor's settings: preprocessor_config.json, else the published defaults."""
        values = dict(PROCESSOR_DEFAULTS[self.name])
        path = Path(directory) / "preprocessor_config.json"
        if path.exists():
            try:
                raw = json.loads(path.read_text())
            except ValueError as exc:
                raise CompileError(f"{path}: not valid JSON ({exc})") from None
            values.update({k: raw[k] for k in values if k in raw})
            if not raw.get("do_normalize", True):
                values.update(image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
            if not raw.get("do_rescale", True):
                values["rescale_factor"] = 1.0
        return values

    def graphs(self, stage: StageConfig) -> list[GraphDecl]:
        opened = self.open(stage, Path("."), weights=False)
        return self.declare(stage, opened, self.spec(stage, opened)[0])

    def declare(self, stage: StageConfig, opened: Opened, spec: VlmEntry) -> list[GraphDecl]:
        config = opened.config
        d = int(config.text_config.hidden_size)
        per_patch = 3 * spec.temporal_patch_size * spec.patch_size * spec.patch_size
        unit = spec.merge_size * spec.merge_size
        tokens_max = self._max_tokens(spec.patch_size * spec.merge_size, spec.max_pixels)
        patches_max = tokens_max * unit
        vision_in = [TensorSpec("pixel_values", ["batch", "patches", per_patch], F32), TensorSpec("position_ids", ["batch", "patches", 2], I64)]
        if self.variant is QWEN25:
            vision_in += [TensorSpec("window_index", ["batch", "tokens"], I64), TensorSpec("window_ids", ["batch", "patches"], I64)]
            vision_out = [TensorSpec("image_embeds", ["batch", "tokens", d], F32)]
        else:
            vision_in += [TensorSpec("interp_indices", ["batch", "patches", 4], I64), TensorSpec("interp_weights", ["batch", "patches", 4], F32)]
            vision_out = [TensorSpec("image_embeds", ["batch", "tokens", d], F32),
                          TensorSpec("deepstack", ["batch", spec.deepstack_layers, "tokens", d], F32)]
        settings = stage.judge or JudgeSettings()
        vision = GraphDecl("vision", GraphIO(vision_in, vision_out, 1, {"patches": patches_max, "tokens": tokens_max}), parity="relative",
                           precision=settings.vision_precision,
                           preprocessing=f"{self.name} image processor in numpy (runtime/qwen_vl.py): bicubic resize to {spec.min_pixels}..{spec.max_pixels} "
                                         f"pixels in multiples of {spec.patch_size * spec.merge_size}, normalised, {spec.patch_size}px patches; "
                                         f"{spec.vision_tokens} tokens at {stage.input_size}x{stage.input_size}")
        prefill_in = [TensorSpec("input_ids", ["batch", "sequence"], I64), TensorSpec("attention_mask", ["batch", "sequence"], I64),
                      TensorSpec("position_ids", ["batch", 3, "sequence"], I64), TensorSpec("visual_index", ["batch", "sequence"], I64),
                      TensorSpec("image_embeds", ["batch", "tokens", d], F32)]
        if spec.deepstack_layers:
            prefill_in.append(TensorSpec("deepstack", ["batch", spec.deepstack_layers, "tokens", d], F32))
        prefill_out = [TensorSpec("answer_logits", ["batch", len(spec.answer_ids)], F32), TensorSpec("yes_logodds", ["batch"], F32)]
        prefill = GraphDecl("prefill", GraphIO(prefill_in, prefill_out, stage.max_batch, {"sequence": spec.max_tokens, "tokens": tokens_max}),
                            parity="judge", preprocessing=f"prompt {len(spec.prompt_ids) - 1} tokens + the image's; answers {spec.answer_tokens}")
        return [vision, prefill]

    # --- loading

    def load(self, stage: StageConfig, config_path: Path) -> ExportableModel:
        opened = self.open(stage, config_path, weights=True)
        spec, prompt = self.spec(stage, opened)
        decls = self.declare(stage, opened, spec)
        model = opened.model
        vision = (Qwen25Vision if self.variant is QWEN25 else Qwen3Vision)(model.model.visual).eval()
        prefill = Prefill(model, spec.answer_ids, spec.answer_yes, spec.deepstack_layers).eval()
        from .qwen_vl_check import example_inputs, finish_stage, prefill_reference, vision_reference

        vision_feeds, prefill_feeds = example_inputs(self, stage, config_path, model, spec)
        # Traced with real inputs (the axes agree: patches, windows, tokens), the largest batch.
        graphs = [
            ExportableGraph(decls[0], vision, vision_reference(model, spec), parity_feeds=vision_feeds, example=vision_feeds[0]),
            ExportableGraph(decls[1], prefill, prefill_reference(model, spec), parity_feeds=prefill_feeds, example=prefill_feeds[-1]),
        ]
        notes = [f"{self.name} from {stage.source}: {opened.config.text_config.num_hidden_layers} decoder layers, "
                 f"{spec.vision_tokens} image tokens at {stage.input_size}x{stage.input_size}; prompt {prompt.text!r}"]
        if opened.placeholder:
            notes.append("PLACEHOLDER weights: this stage is not a roadwork detector")
        return ExportableModel(graphs, opened.source_sha256, opened.placeholder, notes,
                               finish=lambda built: finish_stage(built, model, spec, stage))

    def write_test_checkpoint(self, directory: Path, seed: int = 0) -> Path:
        """A tiny Qwen-VL of the real classes (random weights), with a Qwen-style tokenizer and
        chat template and the published image processor settings."""
        directory.mkdir(parents=True, exist_ok=True)
        write_test_tokenizer(directory, self.variant.test_template)
        proc = PROCESSOR_DEFAULTS[self.name]
        size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280} if self.variant is QWEN25 else {"shortest_edge": 65536, "longest_edge": 16777216}
        (directory / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor" if self.variant is QWEN25 else "Qwen3VLProcessor",
            "size": size, "patch_size": proc["patch_size"], "temporal_patch_size": proc["temporal_patch_size"], "merge_size": proc["merge_size"],
            "image_mean": proc["image_mean"], "image_std": proc["image_std"], "do_rescale": True, "do_normalize": True, "do_resize": True,
            "do_convert_rgb": True, "resample": 3, "rescale_factor": proc["rescale_factor"]}))
        config = build_config(self.variant, self.variant.test_vision, self.variant.test_text, str(directory))
        torch.manual_seed(seed)
        _transformers(self.variant.model_class)(config).save_pretrained(directory)
        return directory


QWEN25_FAMILY = QwenVlFamily(QWEN25)
QWEN3_FAMILY = QwenVlFamily(QWEN3)
