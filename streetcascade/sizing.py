"""Memory of a cascade before anything is built: from each stage's model size (a table of the
models the subnet's plans name, or the checkpoint's own config.json) and its precision.

This is an estimate for choosing a GPU, not the budget check: `load_engine_set` checks the
measured figures of a compiled engine set (runtime/plan.py). What is counted, per stage:
- weights: parameters x bytes per parameter at the precision (4-bit: 0.5 byte + group scales,
  with embeddings, output head and vision tower kept 16-bit, as AWQ-style checkpoints do);
- activations at max_batch (a TensorRT-style scratch arena, shared by engines that run one
  after another: the planner counts the largest once per slot); for a decoder, a prefill of
  max_batch sequences of max_tokens (the worst case a budget must hold);
- KV cache for decoder stages: layers x 2 x kv_heads x head_dim x tokens x max_batch;
- host IO buffers (pinned on a GPU), per slot.
Plus the CUDA context (driver, cuBLAS/cuDNN handles) once per process on a GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from streetcascade.errors import ConfigError

GIB = 2**30
MIB = 2**20
# CUDA context + cuBLAS/cuDNN handles and their workspaces, per process: ~300-600 MiB on recent
# drivers; 768 MiB leaves headroom for the libraries' own pools.
CUDA_CONTEXT_BYTES = 768 * MIB

BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8-dynamic": 1.0, "int8-static": 1.0, "int4": 0.5 + 2.0 / 128}
ACT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 2, "int8-dynamic": 2, "int8-static": 2, "int4": 2}


@dataclass(frozen=True)
class ModelShape:
    """What sizing needs to know about a model (counts from the published configs)."""

    kind: str  # "vision" | "encoder-decoder" | "decoder"
    params: int
    layers: int
    hidden: int
    heads: int
    image_tokens: int  # tokens of one 224 x 224 image through the vision part
    kv_heads: int = 0  # decoders: key/value heads (grouped-query attention)
    head_dim: int = 0
    kept_16bit: int = 0  # parameters a 4-bit checkpoint keeps in 16 bits (embeddings, head, vision)
    default_tokens: int = 0  # decoders: context the KV cache holds by default


# Matched as substrings of the lowercased `source` (hub id or folder name).
KNOWN: dict[str, ModelShape] = {
    "dinov3-vits16": ModelShape("vision", 21_600_000, 12, 384, 6, 201),
    "dinov3-vitb16": ModelShape("vision", 85_700_000, 12, 768, 12, 201),
    "dinov3-vitl16": ModelShape("vision", 303_100_000, 24, 1024, 16, 201),
    "dinov3-vith16plus": ModelShape("vision", 840_500_000, 32, 1280, 20, 201),
    "vit-base-patch16": ModelShape("vision", 86_400_000, 12, 768, 12, 197),
    # PP-OCR (the rapidocr wheel's detector + recognizer, ~16 MB of FP32 weights); the CNN's
    # feature maps at the detector's 736-pixel side stand in as 2000 "tokens".
    "rapidocr": ModelShape("vision", 3_900_000, 1, 96, 1, 2000),
    "florence-2-base": ModelShape("encoder-decoder", 232_000_000, 6, 768, 12, 577, 12, 64, 0, 1024),
    "florence-2-large": ModelShape("encoder-decoder", 771_000_000, 12, 1024, 16, 577, 16, 64, 0, 1024),
    # Qwen3-VL-8B: LM 36 layers, hidden 4096, 8 KV heads of 128; vocab 151,936 (embeddings and
    # untied head 2 x 622M) and a 576M vision tower stay 16-bit in AWQ checkpoints.
    "qwen3-vl-8b": ModelShape("decoder", 8_767_000_000, 36, 4096, 32, 64, 8, 128, 1_820_000_000, 4096),
    "qwen2.5-vl-7b": ModelShape("decoder", 8_292_000_000, 28, 3584, 28, 64, 4, 128, 1_760_000_000, 4096),
    "qwen3-vl-2b": ModelShape("decoder", 2_127_000_000, 28, 2048, 16, 64, 8, 128, 720_000_000, 4096),
    # Qwen2.5-VL-3B: LM 36 layers, hidden 2048, 2 KV heads of 128; tied embeddings (311M) and a
    # 670M vision tower.
    "qwen2.5-vl-3b": ModelShape("decoder", 3_754_000_000, 36, 2048, 16, 64, 2, 128, 981_000_000, 4096),
    # SmolVLM-256M / -500M-Instruct (Idefics3 classes): SmolLM2-135M / -360M (30 / 32 layers, 576 /
    # 960 wide, 3 / 5 KV heads of 64; untied 49,280-token embeddings and head) and a 93M SigLIP
    # B/16-512 vision tower, 64 image tokens per 512x512 image.
    "smolvlm-256m": ModelShape("decoder", 256_500_000, 30, 576, 9, 64, 3, 64, 150_000_000, 8192),
    "smolvlm-500m": ModelShape("decoder", 507_500_000, 32, 960, 15, 64, 5, 64, 188_000_000, 8192),
    # The test-sized VLMs (`random:tiny` of families qwen2.5-vl / qwen3-vl / smolvlm).
    "qwen2.5-vl-tiny": ModelShape("decoder", 200_000, 2, 64, 4, 64, 2, 16, 0, 4096),
    "qwen3-vl-tiny": ModelShape("decoder", 300_000, 3, 64, 4, 64, 2, 16, 0, 4096),
    "smolvlm-tiny": ModelShape("decoder", 200_000, 2, 64, 4, 16, 2, 16, 0, 8192),
}
# Vision-language judges (streetcascade/vlm.py): one prefill pass over prompt + image tokens, no
# KV cache kept. Family -> pixels per image-token side (patch x merge), patches per token side
# (merge), the vision tower's width, and the side every image is resized to (0: input_size;
# SmolVLM: its processor's max_image_size, here SmolVLM-256M/500M's).
JUDGE_FAMILIES = {"qwen2.5-vl": (28, 2, 1280, 0), "qwen3-vl": (32, 2, 1024, 0), "smolvlm": (64, 4, 768, 512)}
JUDGE_PROMPT_TOKENS = 64


def shape_from_config(directory: Path) -> ModelShape | None:
    """Estimate from a local checkpoint's config.json (ViT-like encoders, decoder LMs)."""
    path = directory / "config.json"
    if not path.exists():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    text = cfg.get("text_config", cfg)
    h = int(text.get("hidden_size") or text.get("d_model") or 0)
    layers = int(text.get("num_hidden_layers") or text.get("decoder_layers") or 0)
    if not h or not layers:
        return None
    inter = int(text.get("intermediate_size") or 4 * h)
    heads = int(text.get("num_attention_heads") or max(1, h // 64))
    vocab = int(text.get("vocab_size") or 0)
    if vocab:  # a decoder LM
        kv = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or h // heads)
        attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
        params = layers * (attn + 3 * h * inter) + 2 * vocab * h
        return ModelShape("decoder", params, layers, h, heads, 64, kv, head_dim, 2 * vocab * h, int(text.get("max_position_embeddings", 4096)))
    patch = int(cfg.get("patch_size", 16))
    size = int(cfg.get("image_size", 224))
    tokens = (size // patch) ** 2 + 1 + int(cfg.get("num_register_tokens", 0))
    params = layers * (4 * h * h + 2 * h * inter) + 3 * patch * patch * h
    return ModelShape("vision", params, layers, h, heads, tokens)


def model_shape(source: str, family: str = "") -> ModelShape:
    key = source.lower()
    if key.startswith("random:"):  # placeholder weights of a real shape: "random:vits16" -> dinov3-vits16
        key = f"{family}-{key.split(':', 1)[1]}"
    for name, shape in KNOWN.items():
        if name in key:
            return shape
    local = Path(source)
    if local.is_dir():
        shape = shape_from_config(local)
        if shape is not None:
            return shape
    raise ConfigError(
        f"no size known for {source!r} (family {family or '?'}): use a local checkpoint folder with a config.json, "
        f"or one of {', '.join(sorted(KNOWN))}"
    )


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    precision: str
    weights_bytes: int
    scratch_bytes: int  # activations at max_batch (shareable arena)
    kv_bytes: int
    host_bytes: int  # per slot
    note: str = ""


def estimate_stage(name: str, source: str, family: str, precision: str, max_batch: int, input_size: int = 224, max_tokens: int = 0) -> StageEstimate:
    shape = model_shape(source, family)
    if precision not in BYTES_PER_PARAM:
        raise ConfigError(f"stage {name}: no size rule for precision {precision!r}")
    per_param = BYTES_PER_PARAM[precision]
    if precision == "int4" and shape.kept_16bit:
        weights = (shape.params - shape.kept_16bit) * per_param + shape.kept_16bit * 2.0
    else:
        weights = shape.params * per_param
    act = ACT_BYTES[precision]
    if family in JUDGE_FAMILIES:
        return _judge_estimate(name, shape, family, precision, int(weights), max_batch, input_size, max_tokens)
    ctx = max_tokens or shape.default_tokens
    if shape.kind == "decoder":
        # A prefill of max_batch sequences of ctx tokens; attention is fused (no T x T scores).
        scratch = max_batch * ctx * shape.hidden * 12 * act
    else:
        tokens = shape.image_tokens * (input_size // 224) ** 2 if shape.kind == "vision" else shape.image_tokens
        # The largest live tensors of one transformer layer at max_batch: the MLP's 4h
        # expansion (in and out) and the attention scores, with the residual stream around them.
        scratch = max_batch * (tokens * shape.hidden * 12 + shape.heads * tokens * tokens * 2) * act
    kv = 0
    if shape.kind in ("decoder", "encoder-decoder"):
        kv_heads, head_dim = shape.kv_heads or shape.heads, shape.head_dim or shape.hidden // shape.heads
        per_token = shape.layers * 2 * kv_heads * head_dim * 2  # K and V, 16-bit
        cross = shape.image_tokens if shape.kind == "encoder-decoder" else 0  # encoder states the decoder attends to
        kv = max_batch * (ctx + cross) * per_token
    host = max_batch * input_size * input_size * 3 + max_batch * 4 * 2
    return StageEstimate(name, precision, int(weights), int(scratch), int(kv), int(host))


def _judge_estimate(name: str, shape: ModelShape, family: str, precision: str, weights: int, max_batch: int, input_size: int, max_tokens: int) -> StageEstimate:
    """A VLM judge: the vision tower on one image (patches = merge^2 x its tokens), then one prefill of
    max_batch prompts of prompt + image tokens, attention scores unfused (CPU graphs); no KV cache."""
    factor, merge, vision_hidden, fixed_side = JUDGE_FAMILIES[family]
    input_size = fixed_side or input_size
    tokens = (-(-input_size // factor)) ** 2  # ceil(side / factor) squared, as smart_resize of a square
    ctx = max_tokens or tokens + JUDGE_PROMPT_TOKENS
    act = ACT_BYTES[precision]
    patches = merge * merge * tokens
    vision = patches * vision_hidden * 12 * act + 16 * patches * patches * 4
    prefill = max_batch * (ctx * shape.hidden * 12 * act + shape.heads * ctx * ctx * 4)
    host = patches * 3 * 2 * 16 * 16 * 4 + max_batch * ctx * 8 * 6
    return StageEstimate(name, precision, weights, int(max(vision, prefill)), 0, int(host),
                         note=f"{tokens} image tokens at {input_size}x{input_size}, {ctx} tokens per prompt")
