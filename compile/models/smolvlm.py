"""Family "smolvlm": SmolVLM and Idefics3 vision-language models (transformers'
`SmolVLMForConditionalGeneration`, model_type "smolvlm", SmolVLM2; and
`Idefics3ForConditionalGeneration`, model_type "idefics3": SmolVLM-256M/500M/2B-Instruct,
Idefics3-8B; no remote code) compiled to a one-pass yes/no judge (stage kind "vlm",
runtime/vlm_stage.py), like the Qwen-VL families (compile/models/vlm_common.py):

- `vision`: one image as the processor leaves it, [1, 3, side, side] (side = its
  `max_image_size`) -> the image's language-model tokens [1, tokens, D]: the SigLIP patch
  embedding, the position ids a full image gets (computed once by the model's own embedding
  code and kept in the graph: the image is always whole), the encoder, the post-layernorm and
  the connector (pixel shuffle by `scale_factor`, projection). tokens = (side / patch)^2 /
  scale_factor^2, the processor's `image_seq_len`.
- `prefill`: the prompt with the image's tokens (left-padded batch), 1-D positions as
  generate() makes them, where each image token takes its feature row, the features -> the
  answer tokens' logits at the last position and the yes log-odds.

Image splitting: the processor by default also cuts a large image into max_image_size crops
(`do_image_splitting`), each with its own tokens. The judge runs the single global image, which
is what the processor gives with `do_image_splitting=False` (a 224-512 px validator image holds
no more detail than that); `[stages.judge] image_splitting = true` is refused (not built yet).
The host side (runtime/smolvlm.py) does the processor's two Lanczos resizes and the
normalisation in numpy; the prompt is rendered with the checkpoint's chat template and its
`<image>` written as the processor writes one image
(`<fake_token_around_image><global-img><image>...<fake_token_around_image>`), one `<image>`
kept as the placeholder the runtime fills with the image's tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streetcascade.config import StageConfig
from streetcascade.errors import CompileError
from streetcascade.manifest import GraphIO, TensorSpec, VlmEntry
from streetcascade.runtime.vlm_host import RESAMPLE, assemble
from streetcascade.vlm import JudgeSettings

from .base import GraphDecl
from .vlm_common import F32, Opened, Prefill, Prompt, VlmFamily, chat_template, prefill_decl, render_prompt, token_ids, transformers_class, write_test_tokenizer

IMAGE, FAKE, GLOBAL = "<image>", "<fake_token_around_image>", "<global-img>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", FAKE, IMAGE, GLOBAL,
                  *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))]
# HuggingFaceTB/SmolVLM-256M-Instruct's chat template (the test checkpoint's; a real one brings its own).
TEMPLATE = ("<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}{{':'}}"
            "{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
            "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
            "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
FILTERS = {v: k for k, v in RESAMPLE.items()}  # Pillow filter number -> the manifest's name

TINY = dict(model_type="smolvlm", scale_factor=2,
            vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16, image_size=128,
                        initializer_range=0.2),
            text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e5}, initializer_range=0.2))
SIGLIP_B16_512 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16, image_size=512)
PRESETS = {
    "tiny": TINY,
    "tiny-idefics3": {**TINY, "model_type": "idefics3"},  # the same tiny model as transformers' Idefics3 classes
    # HuggingFaceTB/SmolVLM-256M-Instruct and -500M-Instruct config.json (Idefics3 classes)
    "smolvlm-256m": dict(model_type="idefics3", scale_factor=4, vision=SIGLIP_B16_512,
                         text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                   head_dim=64, vocab_size=49280, max_position_embeddings=8192,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1e5})),
    "smolvlm-500m": dict(model_type="idefics3", scale_factor=4, vision=SIGLIP_B16_512,
                         text=dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                                   head_dim=64, vocab_size=49280, max_position_embeddings=8192,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1e5})),
}


def full_image_positions(embeddings: nn.Module, side: int) -> torch.Tensor:
    """[patches] the position ids the model's embedding code gives every patch of a whole
    side x side image (its bucketing of fractional coordinates, run once here so the graph
    holds exactly what the model computes)."""
    seen = []
    table = embeddings.position_embedding

    class Record(nn.Module):
        def forward(self, ids):
            seen.append(ids)
            return table(ids)

    patches = side // embeddings.patch_size
    embeddings.position_embedding = Record()
    try:
        with torch.no_grad():
            embeddings(torch.zeros(1, 3, side, side), torch.ones(1, patches, patches, dtype=torch.bool))
    finally:
        embeddings.position_embedding = table
    return seen[0][0].clone()


class SmolVlmVision(nn.Module):
    """SigLIP encoder + pixel-shuffle connector on whole images: [batch, 3, side, side] -> [batch, tokens, D]."""

    def __init__(self, model, side: int):
        super().__init__()
        self.vision = model.model.vision_model
        self.connector = model.model.connector
        self.register_buffer("position_ids", full_image_positions(self.vision.embeddings, side))

    def forward(self, pixel_values):
        embeddings = self.vision.embeddings
        x = embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2) + embeddings.position_embedding(self.position_ids)
        for layer in self.vision.encoder.layers:  # no mask: every patch of a whole image is real
            x = layer(x, attention_mask=None)
        return self.connector(self.vision.post_layernorm(x))


# ------------------------------------------------------------------------------- references


def vision_reference(model, spec: VlmEntry):
    """The model's own image features (get_image_features: its embeddings with the patch mask,
    encoder, connector) on the vision graph's input."""

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = model.model.get_image_features(torch.from_numpy(feeds["pixel_values"])[:, None])
        return {"image_embeds": torch.stack(list(out.pooler_output)).numpy()}

    return run


def image_processor(model_type: str, spec: VlmEntry):
    """transformers' own image processor (PIL backend) with the compiled stage's settings,
    image splitting off."""
    if model_type == "idefics3":
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as Processor
    else:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as Processor
    return Processor(do_image_splitting=False, do_resize=bool(spec.resize_longest_edge), size={"longest_edge": spec.resize_longest_edge or spec.image_side},
                     max_image_size={"longest_edge": spec.image_side}, resample=RESAMPLE[spec.resample], image_mean=spec.mean, image_std=spec.std,
                     rescale_factor=spec.rescale)


def transformers_inputs(model, spec: VlmEntry, rgb: np.ndarray) -> dict[str, torch.Tensor]:
    """The model's forward / generate() inputs for one image: its image processor's pixel values
    and mask, the compiled prompt with the image's tokens."""
    px = image_processor(model.config.model_type, spec)(images=[[rgb]], return_tensors="pt")
    ids = torch.from_numpy(assemble(spec.prompt_ids, spec.image_token_id, spec.vision_tokens))[None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": px["pixel_values"],
            "pixel_attention_mask": px["pixel_attention_mask"]}


# ------------------------------------------------------------------------------- the family


class SmolVlmFamily(VlmFamily):
    name = "smolvlm"
    model_classes = {"smolvlm": "SmolVLMForConditionalGeneration", "idefics3": "Idefics3ForConditionalGeneration"}
    presets = PRESETS
    # The published preprocessor_config.json values; size / max_image_size (None) follow the
    # vision tower's image_size: 4x it, and it.
    processor_defaults = dict(size=None, max_image_size=None, resample=1, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                              rescale_factor=1 / 255, do_resize=True)

    def write_tokenizer(self, directory: Path) -> None:
        write_test_tokenizer(directory, TEMPLATE, SPECIAL_TOKENS, {
            "tokenizer_class": "GPT2Tokenizer", "model_max_length": 8192, "bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>",
            "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "add_prefix_space": False,
            "clean_up_tokenization_spaces": False})

    def build_config(self, shape: dict, tokenizer_dir: str):
        ids = token_ids(tokenizer_dir, SPECIAL_TOKENS)
        text = {"model_type": "llama", "vocab_size": ids["vocab"], "bos_token_id": ids["<|im_start|>"], "eos_token_id": ids["<end_of_utterance>"],
                "pad_token_id": ids["<|im_end|>"], "rms_norm_eps": 1e-5, "tie_word_embeddings": False, **shape["text"]}
        config_class = "Idefics3Config" if shape["model_type"] == "idefics3" else "SmolVLMConfig"
        return transformers_class(config_class)(vision_config=dict(shape["vision"]), text_config=text, scale_factor=shape["scale_factor"],
                                                image_token_id=ids[IMAGE], tie_word_embeddings=False)

    def test_processor_files(self, directory: Path, shape: dict) -> None:
        side = shape["vision"]["image_size"]
        kind = "Idefics3" if shape["model_type"] == "idefics3" else "SmolVLM"
        (directory / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": f"{kind}ImageProcessor", "processor_class": f"{kind}Processor", "do_convert_rgb": True, "do_resize": True,
            "size": {"longest_edge": 4 * side}, "max_image_size": {"longest_edge": side}, "resample": 1, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "do_image_splitting": True, "do_pad": True}))
        tokens = (side // shape["vision"]["patch_size"]) ** 2 // shape["scale_factor"] ** 2
        (directory / "processor_config.json").write_text(json.dumps({"image_seq_len": tokens, "processor_class": f"{kind}Processor"}))

    # --- declaration

    def spec(self, stage: StageConfig, opened: Opened) -> tuple[VlmEntry, Prompt]:
        settings = stage.judge or JudgeSettings()
        if settings.image_splitting:
            raise CompileError(f"stage {stage.name}: [stages.judge] image_splitting = true: {self.name} judges run the single global image "
                               "(the processor's do_image_splitting = false); splitting into crops is not built yet")
        config, directory = opened.config, opened.directory
        tokenizer = self.tokenizer(stage, opened)
        image_id = int(config.image_token_id)
        if tokenizer.convert_tokens_to_ids(IMAGE) != image_id:
            raise CompileError(f"{directory}: the tokenizer's {IMAGE} is id {tokenizer.convert_tokens_to_ids(IMAGE)}, the model's image_token_id {image_id}")

        def image_span(text: str) -> str:  # the processor's prompt for one image, not split
            return text.replace(IMAGE, f"{FAKE}{GLOBAL}{IMAGE}{FAKE}")

        prompt = render_prompt(tokenizer, chat_template(directory), settings, image_id, image_span)
        vc = config.vision_config
        patch, scale = int(vc.patch_size), int(config.scale_factor)
        proc = self.processor_config(directory)
        side = int((proc["max_image_size"] or {}).get("longest_edge", vc.image_size))
        longest = int((proc["size"] or {}).get("longest_edge", 4 * side)) if proc["do_resize"] else 0
        if side % patch or (side // patch) % scale:
            raise CompileError(f"{directory}: max_image_size {side} px is not a multiple of patch {patch} x scale_factor {scale}")
        if proc["resample"] not in FILTERS:
            raise CompileError(f"{directory}: preprocessor resample {proc['resample']!r} is not one of Pillow's {sorted(FILTERS)} ({', '.join(FILTERS.values())})")
        tokens = (side // patch) ** 2 // scale**2
        seq_len = self._image_seq_len(directory)
        if seq_len is not None and seq_len != tokens:
            raise CompileError(f"{directory}: processor_config.json image_seq_len {seq_len} differs from the model's {tokens} tokens per "
                               f"{side}x{side} image (patch {patch}, scale_factor {scale})")
        entry = VlmEntry(
            model=self.name, prompt=settings.prompt, prompt_ids=prompt.ids, image_token_id=image_id,
            answer_tokens=prompt.answer_tokens, answer_ids=prompt.answer_ids, answer_yes=prompt.answer_yes,
            patch_size=patch, merge_size=scale, temporal_patch_size=1, min_pixels=side * side, max_pixels=side * side,
            mean=[float(x) for x in proc["image_mean"]], std=[float(x) for x in proc["image_std"]], rescale=float(proc["rescale_factor"]),
            resample=FILTERS[proc["resample"]], resize_longest_edge=longest, image_side=side,
            vision_tokens=tokens, max_tokens=len(prompt.ids) - 1 + tokens)
        return entry, prompt

    @staticmethod
    def _image_seq_len(directory: str) -> int | None:
        path = Path(directory) / "processor_config.json"
        if not path.exists():
            return None
        try:
            value = json.loads(path.read_text()).get("image_seq_len")
        except ValueError as exc:
            raise CompileError(f"{path}: not valid JSON ({exc})") from None
        return None if value is None else int(value)

    def declare(self, stage: StageConfig, opened: Opened, spec: VlmEntry) -> list[GraphDecl]:
        d = int(opened.config.text_config.hidden_size)
        side, tokens = spec.image_side, spec.vision_tokens
        settings = stage.judge or JudgeSettings()
        vision = GraphDecl("vision", GraphIO([TensorSpec("pixel_values", ["batch", 3, side, side], F32)],
                                             [TensorSpec("image_embeds", ["batch", tokens, d], F32)], 1), parity="relative",
                           precision=settings.vision_precision,
                           preprocessing=f"{self.name} image processor in numpy (runtime/smolvlm.py): {spec.resample} resize of the longest edge to "
                                         f"{spec.resize_longest_edge} px, then to {side}x{side}, normalised (no image splitting); {tokens} tokens")
        return [vision, prefill_decl(stage, spec, d, tokens, [], [])]

    # --- modules and references

    def modules(self, model, spec: VlmEntry):
        return SmolVlmVision(model, spec.image_side), Prefill(model.model.text_model, model.lm_head, spec.answer_ids, spec.answer_yes)

    vision_reference = staticmethod(vision_reference)
    transformers_inputs = staticmethod(transformers_inputs)


FAMILY = SmolVlmFamily()
