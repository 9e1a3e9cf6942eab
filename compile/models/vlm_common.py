"""What every VLM judge family shares (families qwen2.5-vl, qwen3-vl: compile/models/qwen_vl.py;
smolvlm: compile/models/smolvlm.py). A judge is compiled to two graphs, `vision` (one image ->
its language-model tokens) and `prefill` (the prompt with the image's tokens -> the answer
tokens' logits at the last position and the log-odds of yes against no); stage kind "vlm"
(runtime/vlm_stage.py).

- `VlmFamily`: opening a checkpoint (local folder, hub id, AutoAWQ checkpoint, `random:<preset>`
  with `-lmN` to cut the language model), the image processor's settings, the graph
  declaration's shared part, the load flow (modules, references, example inputs, the
  whole-stage check: compile/models/vlm_check.py) and the tiny test checkpoint. A family says
  what differs: its config, vision module, image preparation (`spec`) and references.
- the chat prompt rendered with the checkpoint's own template and tokenised at compile time, its
  image span as the processor writes it, and the answer tokens looked up in its tokenizer
  (`render_prompt`); a byte-level BPE test tokenizer with the family's special tokens.
- `Prefill`: the language model over the whole prompt (image features gathered into their
  rows, causal + padding mask), the head reduced to the answer tokens' rows at the last position.
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

from .base import ExportableGraph, ExportableModel, GraphDecl, ModelFamily, fetch_hub_snapshot, hash_checkpoint, hash_text, load_or_fail, logsumexp_last, resolve_source

log = logging.getLogger(__name__)

F32, I64 = "float32", "int64"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")
PRESET = re.compile(r"^(?P<shape>tiny|[a-z0-9.-]+?)(?:-lm(?P<layers>\d+))?$")
TEST_CORPUS = ["system user assistant You are a helpful assistant.", "Is there road work in this image? Answer yes or no.",
               "traffic cones, barriers, excavation, road work signs, workers in high-visibility clothing",
               "yes no Yes No YES NO", " yes", " no", " Yes", " No", "Yes", "No", "User: Assistant:"]


def transformers_class(name: str):
    import transformers

    return getattr(transformers, name)


# ------------------------------------------------------------------------------- tokenizer


def write_test_tokenizer(directory: Path, template: str, special_tokens: list[str], config: dict) -> None:
    """A byte-level BPE tokenizer with the family's special tokens, trained on the spot (so the
    answer words and the prompt are short), saved with `config` as its tokenizer_config.json and
    the chat template beside it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEST_CORPUS * 30, trainers.BpeTrainer(vocab_size=500, special_tokens=special_tokens, show_progress=False,
                                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": template}))


def token_ids(directory: str, tokens: list[str]) -> dict[str, int]:
    """The ids of `tokens` in a tokenizer.json, and its vocabulary size under "vocab"."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
    return {"vocab": tok.get_vocab_size(), **{t: tok.token_to_id(t) for t in tokens}}


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


def render_prompt(tokenizer, template: str, settings: JudgeSettings, image_token_id: int, image_span=None) -> Prompt:
    """The chat prompt (one image, then the question; the assistant's turn opened) as token ids,
    exactly as the model's processor tokenises it, and the answer tokens. `image_span(text)`: the
    text with the template's image placeholder written as the processor writes an image, with
    ONE image token where the image's tokens go (SmolVLM: <fake_token_around_image><global-img>
    <image><fake_token_around_image>); None: the template's own placeholder is that token."""
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": settings.prompt}]}
    # Content as a list of parts: every family's template renders that (SmolVLM's renders only lists).
    system = [{"role": "system", "content": [{"type": "text", "text": settings.system}]}] if settings.system else []
    try:
        text = tokenizer.apply_chat_template([*system, user], chat_template=template, add_generation_prompt=True, tokenize=False)
    except Exception as exc:
        raise CompileError(f"the chat template failed to render the prompt: {type(exc).__name__}: {exc}") from None
    if settings.system and settings.system not in text:
        raise CompileError(f"the chat template dropped the system message {settings.system!r}: {text!r}")
    if image_span is not None:
        text = image_span(text)
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


# ------------------------------------------------------------------------------- the prefill graph


def log_sum_exp(logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(logits[:, columns]))), without ReduceLogSumExp in the graph (logsumexp_last)."""
    return logsumexp_last(logits.masked_fill(~columns, float("-inf")))


class Prefill(nn.Module):
    """The language model over the whole prompt, the head applied to the last position for the
    answer tokens only. `multimodal_rope`: position_ids are [batch, 3, tokens] (Qwen-VL's
    temporal/height/width positions), else [batch, tokens]. `deepstack_layers`: Qwen3-VL's
    vision features added to the image tokens after each of the first layers."""

    def __init__(self, language_model, lm_head, answer_ids: list[int], answer_yes: list[bool], multimodal_rope: bool = False,
                 deepstack_layers: int = 0):
        super().__init__()
        self.lm = language_model
        self.multimodal_rope = multimodal_rope
        self.deepstack_layers = deepstack_layers
        # The head's rows of the answer tokens: [answers, hidden] instead of [vocab, hidden].
        self.register_buffer("head", lm_head.weight[list(answer_ids)].detach().clone())
        self.register_buffer("yes", torch.tensor(answer_yes, dtype=torch.bool))

    def forward(self, input_ids, attention_mask, position_ids, visual_index, image_embeds, *deepstack):
        lm = self.lm
        x = lm.embed_tokens(input_ids)
        is_image = (visual_index >= 0).unsqueeze(-1)
        rows = visual_index.clamp(min=0).unsqueeze(-1).expand(-1, -1, x.shape[-1])
        x = torch.where(is_image, torch.gather(image_embeds, 1, rows), x)
        cos, sin = lm.rotary_emb(x, position_ids.transpose(0, 1) if self.multimodal_rope else position_ids)
        positions = torch.arange(x.shape[1], device=x.device)
        allowed = (positions[None, :] <= positions[:, None])[None] & attention_mask.bool()[:, None, :]
        mask = torch.where(allowed, 0.0, torch.finfo(x.dtype).min).unsqueeze(1)
        for i, layer in enumerate(lm.layers):
            x = layer(x, attention_mask=mask, position_embeddings=(cos, sin))
            if i < self.deepstack_layers:  # the model's hidden[visual_mask] += features[i], densely
                x = x + torch.where(is_image, torch.gather(deepstack[0][:, i], 1, rows), 0.0)
        logits = lm.norm(x[:, -1]) @ self.head.T
        return logits, log_sum_exp(logits, self.yes) - log_sum_exp(logits, ~self.yes)


def prefill_decl(stage: StageConfig, spec: VlmEntry, hidden: int, tokens_max: int, position_axes: list, features: list[TensorSpec]) -> GraphDecl:
    """The prefill graph: prompt ids with the image's tokens (left-padded batch), mask,
    positions, where each image token takes its feature row, the features -> answer logits and
    yes log-odds at the last position."""
    inputs = [TensorSpec("input_ids", ["batch", "sequence"], I64), TensorSpec("attention_mask", ["batch", "sequence"], I64),
              TensorSpec("position_ids", ["batch", *position_axes, "sequence"], I64), TensorSpec("visual_index", ["batch", "sequence"], I64),
              TensorSpec("image_embeds", ["batch", "tokens", hidden], F32), *features]
    outputs = [TensorSpec("answer_logits", ["batch", len(spec.answer_ids)], F32), TensorSpec("yes_logodds", ["batch"], F32)]
    return GraphDecl("prefill", GraphIO(inputs, outputs, stage.max_batch, {"sequence": spec.max_tokens, "tokens": tokens_max}),
                     parity="judge", preprocessing=f"prompt {len(spec.prompt_ids) - 1} tokens + the image's; answers {spec.answer_tokens}",
                     attention_fusable=False)


# ------------------------------------------------------------------------------- the family


@dataclass
class Opened:
    model: object | None  # loaded lazily (graphs() needs only the config and tokenizer)
    config: object
    directory: str  # tokenizer, chat template, processor config
    source_sha256: str
    placeholder: bool


@lru_cache(maxsize=8)
def preset_tokenizer(family: str) -> str:
    """A generated tokenizer for a family's random presets (kept for the process's life)."""
    from . import get_family

    directory = Path(tempfile.mkdtemp(prefix=f"streetcascade-{family}-tokenizer-"))
    get_family(family).write_tokenizer(directory)
    return str(directory)


class VlmFamily(ModelFamily):
    """A VLM judge family. Subclasses set `name`, `model_classes` (config.json model_type ->
    transformers class), `presets` (random:<preset> -> shapes; "tiny" is the test size) and
    `processor_defaults`, and say how to build a config, the vision module, the stage's
    VlmEntry and graph declarations, and the references (vlm_check.py runs them)."""

    kind = "vlm"
    vision_attention_fusable = True  # its vision graph's attention is unmasked (attention = "fused" fuses it)
    model_classes: dict[str, str]
    presets: dict[str, dict]
    processor_defaults: dict

    # --- what a family says

    def build_config(self, shape: dict, tokenizer_dir: str):
        """The transformers config of a preset `shape` with the tokenizer's special ids."""
        raise NotImplementedError

    def write_tokenizer(self, directory: Path) -> None:
        raise NotImplementedError

    def test_processor_files(self, directory: Path, shape: dict) -> None:
        """preprocessor_config.json (and processor_config.json) as the published checkpoints of
        this shape have them."""
        raise NotImplementedError

    def spec(self, stage: StageConfig, opened: Opened) -> tuple[VlmEntry, Prompt]:
        raise NotImplementedError

    def declare(self, stage: StageConfig, opened: Opened, spec: VlmEntry) -> list[GraphDecl]:
        raise NotImplementedError

    def modules(self, model, spec: VlmEntry) -> tuple[nn.Module, nn.Module]:
        """(vision, prefill) torch modules with the declared graphs' IO."""
        raise NotImplementedError

    def vision_reference(self, model, spec: VlmEntry):
        """feeds -> outputs: transformers' own vision tower (+ connector) on the vision graph's inputs."""
        raise NotImplementedError

    def prefill_reference(self, model, spec: VlmEntry):
        """feeds -> answer logits / yes log-odds: the model's own forward with the image features
        handed in (its embedding merge, causal and padding mask, Qwen3-VL's deepstack injection,
        final norm), the head applied to the last position."""
        from .vlm_check import answers

        def run(feeds: dict) -> dict:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            counts = (feeds["visual_index"] >= 0).sum(axis=1)
            embeds = tuple(torch.from_numpy(feeds["image_embeds"][r, :c]) for r, c in enumerate(counts))
            if spec.deepstack_layers:
                from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

                deep = [tuple(torch.from_numpy(feeds["deepstack"][r, k, :c]) for r, c in enumerate(counts)) for k in range(spec.deepstack_layers)]
                image = BaseModelOutputWithDeepstackFeatures(pooler_output=embeds, deepstack_features=deep)
            else:
                image = BaseModelOutputWithPooling(pooler_output=embeds)
            positions = torch.from_numpy(feeds["position_ids"])
            if positions.ndim == 3:  # multimodal RoPE: the graph takes [batch, 3, tokens], transformers [3, batch, tokens]
                positions = positions.transpose(0, 1).contiguous()
            with torch.no_grad():
                out = model.model(input_ids=torch.from_numpy(feeds["input_ids"]), attention_mask=torch.from_numpy(feeds["attention_mask"]),
                                  position_ids=positions, mm_encoder_outputs={"image": image})
                logits = model.lm_head(out.last_hidden_state[:, -1])[:, spec.answer_ids]
            return answers(logits, spec)

        return run

    def transformers_inputs(self, model, spec: VlmEntry, rgb) -> dict:
        """transformers' inputs for one image (forward or generate()): its image processor's
        output and the compiled prompt with the image's tokens."""
        raise NotImplementedError

    def transformers_judge(self, model, spec: VlmEntry, images) -> dict:
        """transformers end to end on images: each image's transformers_inputs (its image
        processor, the compiled prompt with the image's tokens), the model's own forward, the
        answer logits at the last position."""
        from .vlm_check import answers

        rows = []
        for rgb in images:
            inputs = self.transformers_inputs(model, spec, rgb)
            with torch.no_grad():
                out = model(**inputs, logits_to_keep=1)
            rows.append(out.logits[:, -1, spec.answer_ids])
        return answers(torch.cat(rows), spec)

    # --- shared

    def family_of(self, model_type: str) -> str:
        from . import FAMILIES, get_family

        for name in FAMILIES.names():
            family = get_family(name)
            if isinstance(family, VlmFamily) and model_type in family.model_classes:
                return name
        return "?"

    def open(self, stage: StageConfig, config_path: Path, weights: bool) -> Opened:
        source = resolve_source(stage.source, config_path)
        if source.kind == "random":
            return self._random(stage, source.value, weights)
        directory = fetch_hub_snapshot(source.value) if source.kind == "hub" else source.value
        config = load_or_fail("config", stage.source, lambda: transformers_class("AutoConfig").from_pretrained(directory))
        if config.model_type not in self.model_classes:
            raise CompileError(f"checkpoint {stage.source!r} is a {config.model_type!r} model; family {self.name} takes "
                               f"{' or '.join(repr(t) for t in self.model_classes)} (family {self.family_of(config.model_type)})")
        quant = getattr(config, "quantization_config", None) or {}
        quant = quant if isinstance(quant, dict) else quant.to_dict()
        awq = str(quant.get("quant_method", "")).lower() == "awq"
        if quant and not awq:
            raise CompileError(f"checkpoint {stage.source!r}: quantization {quant.get('quant_method')!r} is not supported "
                               "(a float checkpoint, or an AutoAWQ one)")
        model = None
        if weights:
            model = load_or_fail("weights", stage.source, lambda: self._load_weights(directory, config, awq))
        return Opened(model, config, directory, hash_checkpoint(directory), placeholder=False)

    def _load_weights(self, directory: str, config, awq: bool):
        """The float model. An AutoAWQ checkpoint loads as its exact dequantized float32 copy
        (compile/int4.py `float_checkpoint`): with precision "int4" the exported MatMuls that
        carry those weights are then replaced by the checkpoint's own 4-bit codes."""
        from ..int4 import float_checkpoint

        weights = float_checkpoint(directory) if awq else directory
        return transformers_class(self.model_classes[config.model_type]).from_pretrained(str(weights), dtype=torch.float32).eval()

    def _random(self, stage: StageConfig, preset: str, weights: bool) -> Opened:
        m = PRESET.match(preset)
        name = m.group("shape") if m else preset
        if name not in self.presets:
            raise CompileError(f"random:{preset}: unknown preset for {self.name}; known: {', '.join(self.presets)} (optionally -lmN: N decoder layers)")
        shape = self.presets[name]
        if m.group("layers"):
            shape = {**shape, "text": {**shape["text"], "num_hidden_layers": int(m.group("layers"))}}
        tokenizer_dir = preset_tokenizer(self.name)
        config = self.build_config(shape, tokenizer_dir)
        model = None
        if weights:
            torch.manual_seed(stage.seed)
            model = transformers_class(self.model_classes[config.model_type])(config).eval()
        return Opened(model, config, tokenizer_dir, hash_text(f"{stage.source}:{stage.seed}"), placeholder=True)

    def tokenizer(self, stage: StageConfig, opened: Opened):
        return load_or_fail("tokenizer", stage.source, lambda: transformers_class("AutoTokenizer").from_pretrained(opened.directory))

    def processor_config(self, directory: str) -> dict:
        """The image processor's settings: preprocessor_config.json over the published defaults
        (`processor_defaults`); without normalisation / rescaling, their neutral values."""
        values = dict(self.processor_defaults)
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

    def load(self, stage: StageConfig, config_path: Path) -> ExportableModel:
        from .vlm_check import example_inputs, finish_stage

        opened = self.open(stage, config_path, weights=True)
        spec, prompt = self.spec(stage, opened)
        decls = self.declare(stage, opened, spec)
        model = opened.model
        vision, prefill = (m.eval() for m in self.modules(model, spec))
        vision_feeds, prefill_feeds = example_inputs(self, stage, config_path, model, spec)
        # Traced with real inputs (the axes agree: patches, windows, tokens), the largest batch.
        graphs = [
            ExportableGraph(decls[0], vision, self.vision_reference(model, spec), parity_feeds=vision_feeds, example=vision_feeds[0]),
            ExportableGraph(decls[1], prefill, self.prefill_reference(model, spec), parity_feeds=prefill_feeds, example=prefill_feeds[-1]),
        ]
        side = spec.image_side or stage.input_size
        notes = [f"{self.name} from {stage.source}: {opened.config.text_config.num_hidden_layers} decoder layers, "
                 f"{spec.vision_tokens} image tokens at {side}x{side}; prompt {prompt.text!r}"]
        if opened.placeholder:
            notes.append("PLACEHOLDER weights: this stage is not a roadwork detector")
        return ExportableModel(graphs, opened.source_sha256, opened.placeholder, notes,
                               finish=lambda built: finish_stage(self, built, model, spec, stage))

    def write_test_checkpoint(self, directory: Path, seed: int = 0, preset: str = "tiny") -> Path:
        """A tiny model of the real classes (random weights; `preset`: another of the family's
        test shapes), with a tokenizer of the family's special tokens, its chat template and the
        published image processor settings."""
        directory.mkdir(parents=True, exist_ok=True)
        self.write_tokenizer(directory)
        shape = self.presets[preset]
        self.test_processor_files(directory, shape)
        config = self.build_config(shape, str(directory))
        torch.manual_seed(seed)
        transformers_class(self.model_classes[config.model_type])(config).save_pretrained(directory)
        return directory
