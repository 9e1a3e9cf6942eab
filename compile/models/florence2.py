"""Family "florence2": Florence-2 (transformers' native `Florence2ForConditionalGeneration`, no
remote code) compiled to five graphs that the runtime drives without PyTorch or transformers
(runtime/florence2.py), for the OCR stage (stage kind "ocr"):

- `vision`: uint8 NHWC pixels (the stage's input_size, square) -> projected image features;
  rescale and normalisation are in the graph, like stage 1's;
- `embed`: token ids -> token embeddings (the runtime puts the image features in front, where
  the processor's `<image>` placeholder tokens are);
- `encoder`: embeddings + attention mask -> encoder states;
- `decoder`: the first decoding step -> logits, the self-attention cache and the cross-attention
  cache (explicit tensors, `present.*` / `cross.*`);
- `decoder_with_past`: one more token with the caches in -> logits and the grown self cache.

A sixth graph, PP-OCR's text detector (from the rapidocr wheel, as the ppocr family finds it),
gates the decoder: an image in which it finds no text box costs one detector run and never
reaches the decoder.

The tokenizer (tokenizer.json) and what generation needs (start / end tokens, the prompt ids of
the `<OCR>` and `<OCR_WITH_REGION>` tasks, built as the model's processor builds them) are stored
in the `embed` graph's metadata, so they are hashed with the engine set.

`source`: a local checkpoint folder or a hub id (downloaded at compile time). Parity is tensor
parity of every graph against the PyTorch module it was exported from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streetcascade.config import StageConfig
from streetcascade.errors import CompileError
from streetcascade.manifest import GraphIO, TensorSpec

from .base import ExportableGraph, ExportableModel, GraphDecl, ModelFamily, Normalization, UInt8Preprocess, fetch_hub_snapshot, hash_checkpoint, load_or_fail, processor_normalization, resolve_source

# The processor's task prompts (transformers Florence2Processor.task_prompts_without_inputs).
TASK_PROMPTS = {"<OCR>": "What is the text in the image?", "<OCR_WITH_REGION>": "What is the text in the image, with regions?"}
CLIP_NORM = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1 / 255)
PROMPT_TOKENS = 16  # room for the prompt after the image tokens (axis size for warm-up)
PAST_WARMUP = 8


def _config(directory: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(directory)


def shape_of(config, input_size: int) -> dict:
    text = config.text_config
    return {
        "layers": text.decoder_layers,
        "heads": text.decoder_attention_heads,
        "head_dim": text.d_model // text.decoder_attention_heads,
        "d_model": text.d_model,
        "vocab": text.vocab_size,
        "image_tokens": (input_size // 32) ** 2 + 1,
    }


def kv_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}.{i}.{w}" for i in range(layers) for w in ("key", "value")]


def declare(s: dict, input_size: int) -> list[GraphDecl]:
    L, H, hd, D, V, N = s["layers"], s["heads"], s["head_dim"], s["d_model"], s["vocab"], s["image_tokens"]
    f32 = "float32"
    sizes = {"tokens": N + PROMPT_TOKENS, "past": PAST_WARMUP, "steps": PAST_WARMUP + 1}

    def kv(prefix, axis):
        return [TensorSpec(n, ["batch", H, axis, hd], f32) for n in kv_names(prefix, L)]

    dec_in = [TensorSpec("input_ids", ["batch", 1], "int64"), TensorSpec("encoder_hidden_states", ["batch", "tokens", D], f32),
              TensorSpec("encoder_attention_mask", ["batch", "tokens"], "int64")]
    from .ppocr import detector_io

    return [
        # PP-OCR's text detector gates the decoder: an image without text boxes never reaches it.
        GraphDecl("detector", detector_io("x", "fetch_name_0"), opset=11, parity="tensor",
                  preprocessing="text-presence gate (PP-OCR detector): RGB, shorter side 736, (x / 255 - 0.5) / 0.5, NCHW"),
        GraphDecl("vision", GraphIO([TensorSpec("pixels", ["batch", input_size, input_size, 3], "uint8")],
                                    [TensorSpec("image_features", ["batch", N, D], f32)], 1), parity="tensor",
                  preprocessing=f"uint8 NHWC RGB {input_size}x{input_size} -> CLIP normalisation (in the graph)"),
        GraphDecl("embed", GraphIO([TensorSpec("input_ids", ["batch", "tokens"], "int64")], [TensorSpec("embeds", ["batch", "tokens", D], f32)], 1, sizes),
                  parity="tensor"),
        GraphDecl("encoder", GraphIO([TensorSpec("inputs_embeds", ["batch", "tokens", D], f32), TensorSpec("attention_mask", ["batch", "tokens"], "int64")],
                                     [TensorSpec("hidden", ["batch", "tokens", D], f32)], 1, sizes), parity="tensor"),
        GraphDecl("decoder", GraphIO(dec_in, [TensorSpec("logits", ["batch", 1, V], f32), *kv("present", 1), *kv("cross", "tokens")], 1, {**sizes, "steps": 1}),
                  parity="tensor"),
        GraphDecl("decoder_with_past", GraphIO([*dec_in, *kv("past", "past"), *kv("cross", "tokens")],
                                               [TensorSpec("logits", ["batch", 1, V], f32), *kv("present", "steps")], 1, sizes), parity="tensor"),
    ]


class VisionGraph(nn.Module):
    def __init__(self, model, norm: Normalization):
        super().__init__()
        self.pre = UInt8Preprocess(norm)
        self.model = model

    def forward(self, pixels):
        return self.model.model.get_image_features(self.pre(pixels)).pooler_output


class EmbedGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids):
        return self.embed(input_ids)


class EncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.model.language_model.encoder

    def forward(self, inputs_embeds, attention_mask):
        return self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state


def _flat(cache, layers: int, cross: bool) -> list[torch.Tensor]:
    part = cache.cross_attention_cache if cross else cache.self_attention_cache
    out = []
    for i in range(layers):
        out += [part.layers[i].keys, part.layers[i].values]
    return out


class DecoderGraph(nn.Module):
    """The first step: empty caches in, both caches out (the cross cache computed once here)."""

    def __init__(self, model, layers: int):
        super().__init__()
        self.decoder = model.model.language_model.decoder
        self.head = model.lm_head
        self.layers = layers

    def forward(self, input_ids, encoder_hidden_states, encoder_attention_mask):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.decoder(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                           cache=cache, use_cache=True)
        return (self.head(out.last_hidden_state), *_flat(out.cache, self.layers, False), *_flat(out.cache, self.layers, True))


class DecoderWithPastGraph(nn.Module):
    """One more token: both caches in (the cross part marked computed), the grown self cache out.
    encoder_hidden_states only shapes the cross-attention mask here."""

    def __init__(self, model, layers: int):
        super().__init__()
        self.decoder = model.model.language_model.decoder
        self.head = model.lm_head
        self.layers = layers

    def forward(self, input_ids, encoder_hidden_states, encoder_attention_mask, *kv):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        L = self.layers
        self_kv = [(kv[2 * i], kv[2 * i + 1]) for i in range(L)]
        cross_kv = [(kv[2 * L + 2 * i], kv[2 * L + 2 * i + 1]) for i in range(L)]
        cache = EncoderDecoderCache(DynamicCache(self_kv), DynamicCache(cross_kv))
        out = self.decoder(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                           cache=cache, use_cache=True)
        return (self.head(out.last_hidden_state), *_flat(out.cache, L, False))


def _torch_reference(module: nn.Module, decl: GraphDecl):
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outs = module(*(torch.from_numpy(feeds[s.name]) for s in decl.io.inputs))
        outs = outs if isinstance(outs, tuple) else (outs,)
        return {s.name: o.numpy() for s, o in zip(decl.io.outputs, outs)}

    return run


def prompt_ids(tokenizer, directory: str | None, image_token_id: int, image_tokens: int, bos: int, eos: int) -> dict[str, list[int]]:
    """The encoder input ids of each OCR task, as the processor builds them: the image
    placeholder tokens, <s>, the task prompt, </s>. With the checkpoint's own processor when it
    has one; else the tokenizer and the processor's task prompts."""
    out = {}
    processor = None
    if directory is not None:
        try:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(directory)
        except Exception:  # a checkpoint without processor files (tests): build the prompt ourselves
            processor = None
    for task, text in TASK_PROMPTS.items():
        if processor is not None:
            ids = processor(text=task, images=np.zeros((32, 32, 3), np.uint8), return_tensors="np")["input_ids"][0].tolist()
        else:
            ids = [image_token_id] * image_tokens + [bos] + tokenizer.encode(text, add_special_tokens=False).ids + [eos]
        out[task] = [int(i) for i in ids]
    return out


class Florence2Family(ModelFamily):
    name = "florence2"
    kind = "ocr"

    def graphs(self, stage: StageConfig) -> list[GraphDecl]:
        source = resolve_source(stage.source, Path("."))
        directory = fetch_hub_snapshot(source.value) if source.kind == "hub" else source.value
        config = load_or_fail("config", stage.source, lambda: _config(directory))
        return declare(shape_of(config, stage.input_size), stage.input_size)

    def load(self, stage: StageConfig, config_path: Path) -> ExportableModel:
        from tokenizers import Tokenizer
        from transformers import Florence2ForConditionalGeneration

        source = resolve_source(stage.source, config_path)
        if source.kind == "random":
            raise CompileError("florence2 has no random presets: give a checkpoint folder or hub id (tests write a tiny one)")
        directory = fetch_hub_snapshot(source.value) if source.kind == "hub" else source.value
        model = load_or_fail("weights", stage.source, lambda: Florence2ForConditionalGeneration.from_pretrained(directory).eval())
        if stage.input_size % 32:
            raise CompileError(f"stage {stage.name}: florence2 input_size must be a multiple of 32, got {stage.input_size}")
        s = shape_of(model.config, stage.input_size)
        decls = declare(s, stage.input_size)
        tok_path = Path(directory) / "tokenizer.json"
        if not tok_path.exists():
            raise CompileError(f"{directory}: no tokenizer.json (the runtime decodes with the `tokenizers` library)")
        tokenizer = Tokenizer.from_file(str(tok_path))
        text_cfg = model.config.text_config
        bos, eos = int(text_cfg.bos_token_id), int(text_cfg.eos_token_id)
        prompts = prompt_ids(tokenizer, directory if (Path(directory) / "preprocessor_config.json").exists() else None,
                             int(model.config.image_token_id), s["image_tokens"], bos, eos)
        generation = {"decoder_start_token_id": int(text_cfg.decoder_start_token_id), "eos_token_id": eos, "bos_token_id": bos,
                      "pad_token_id": int(text_cfg.pad_token_id), "image_tokens": s["image_tokens"], "layers": s["layers"],
                      "prompts": prompts}
        norm = processor_normalization(directory, CLIP_NORM)
        modules = [VisionGraph(model, norm), EmbedGraph(model), EncoderGraph(model), DecoderGraph(model, s["layers"]), DecoderWithPastGraph(model, s["layers"])]
        feeds = self._example_feeds(modules, decls[1:], prompts["<OCR>"], stage)
        from .ppocr import detector_graph, locate_models

        det, _ = locate_models("rapidocr", config_path)
        graphs = [detector_graph(decls[0], det, np.random.default_rng(stage.seed))]
        for module, decl, f in zip(modules, decls[1:], feeds):
            metadata = {"tokenizer.json": tok_path.read_text(encoding="utf-8"), "generation.json": json.dumps(generation)} if decl.role == "embed" else {}
            graphs.append(ExportableGraph(decl, module.eval(), _torch_reference(module.eval(), decl), parity_feeds=f, metadata=metadata))
        return ExportableModel(graphs, hash_checkpoint(directory), placeholder=False, notes=[f"Florence-2 from {stage.source}, {s['layers']} decoder layers"])

    @staticmethod
    def _example_feeds(modules, decls, prompt: list[int], stage: StageConfig) -> list[list[dict]]:
        """Real intermediate tensors (one image through the chain) for each graph's parity."""
        rng = np.random.default_rng(stage.seed)
        pixels = rng.integers(0, 255, (1, stage.input_size, stage.input_size, 3), dtype=np.uint8)
        ids = np.array([prompt], np.int64)
        ref = [_torch_reference(m, d) for m, d in zip(modules, decls)]
        feats = ref[0]({"pixels": pixels})["image_features"]
        emb = ref[1]({"input_ids": ids})["embeds"]
        emb = np.concatenate([feats, emb[:, feats.shape[1]:]], axis=1).astype(np.float32)
        mask = np.ones(ids.shape, np.int64)
        hidden = ref[2]({"inputs_embeds": emb, "attention_mask": mask})["hidden"]
        first_in = {"input_ids": np.array([[2]], np.int64), "encoder_hidden_states": hidden, "encoder_attention_mask": mask}
        first = ref[3](first_in)
        layers = len([s for s in decls[3].io.outputs if s.name.startswith("present.")]) // 2
        past_in = {"input_ids": np.array([[int(first["logits"][0, -1].argmax())]], np.int64), "encoder_hidden_states": hidden,
                   "encoder_attention_mask": mask}
        for n_past, n_present in zip(kv_names("past", layers), kv_names("present", layers)):
            past_in[n_past] = first[n_present]
        for n in kv_names("cross", layers):
            past_in[n] = first[n]
        return [[{"pixels": pixels}], [{"input_ids": ids}], [{"inputs_embeds": emb, "attention_mask": mask}], [first_in], [past_in]]

    def write_test_checkpoint(self, directory: Path, seed: int = 0) -> Path:
        """A tiny Florence-2 of the real classes, with a byte-level BPE tokenizer trained on the
        spot (BART's special tokens, <image>, the 1000 <loc_i> tokens and the task tokens)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import BartConfig, Florence2Config, Florence2ForConditionalGeneration
        from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

        directory.mkdir(parents=True, exist_ok=True)
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<image>", *TASK_PROMPTS, *[f"<loc_{i}>" for i in range(1000)]]
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        corpus = ["What is the text in the image?", "ROAD WORK AHEAD", "BAUSTELLE", "TRAVAUX", "DETOUR", "LANE CLOSED", "PARKING"] * 20
        tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1400, special_tokens=specials, show_progress=False,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.save(str(directory / "tokenizer.json"))
        torch.manual_seed(seed)
        vision = Florence2VisionConfig(depths=[1, 1, 1, 1], embed_dim=[16, 32, 48, 64], num_heads=[1, 2, 3, 4], num_groups=[1, 2, 3, 4],
                                       window_size=2, projection_dim=32, max_position_embeddings=8, drop_path_rate=0.0)
        text = BartConfig(vocab_size=tok.get_vocab_size(), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
                          forced_eos_token_id=None, init_std=1.0, bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
        config = Florence2Config(vision_config=vision, text_config=text, image_token_id=tok.token_to_id("<image>"))
        Florence2ForConditionalGeneration(config).save_pretrained(directory)
        return directory


FAMILY = Florence2Family()
