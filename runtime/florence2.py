"""Florence-2 `<OCR>` without PyTorch or transformers: greedy decoding over the five graphs
compiled by compile/models/florence2.py, the tokenizer from the engine set (the `tokenizers`
library), generation settings and task prompts from the `embed` graph's metadata.

Per image: vision (uint8 pixels at the compiled size) -> image features; embed(prompt ids),
with the image features in place of the `<image>` placeholder tokens; encoder; then the first
decoder step (which computes the cross-attention cache once) and one `decoder_with_past` step
per token, the self-attention cache passed back in, until the end token or `max_new_tokens`.
The caches never come back to numpy: with ONNX Runtime they are IO-bound OrtValues in its
arena, handed from one step's outputs to the next step's inputs without a copy
(`Slot.infer_keep`).
`suppress` lists token ids never chosen (as transformers' `suppress_tokens`).
"""

from __future__ import annotations

import json
import re
import threading

import numpy as np

from streetcascade.errors import BackendUnavailable, EngineMismatch

from .backends.base import Engine
from .images import resize_to

try:
    from tokenizers import Tokenizer
except ImportError as exc:  # the `ocr` extra installs it
    raise BackendUnavailable(f"the tokenizers library is not installed (pip install 'streetcascade[ocr]'): {exc}") from exc

ROLES = ("vision", "embed", "encoder", "decoder", "decoder_with_past")  # plus an optional "detector" (the gate)
_REGION = re.compile(r"(.+?)" + r"<loc_(\d+)>" * 8)
LOC_BINS = 1000


def parse_ocr_with_region(text: str, image_size: tuple[int, int]) -> list[tuple[str, list[int]]]:
    """`<OCR_WITH_REGION>` output -> (text, quad box [x1, y1, ..., x4, y4] in pixels) per line,
    as transformers' Florence2PostProcessor does: each line is followed by 8 location tokens,
    coordinates in 1000 bins per side, taken at the bin centre."""
    text = text.replace("<s>", "").replace("</s>", "").replace("<pad>", "")
    width, height = image_size
    out = []
    for content, *bins in _REGION.findall(text):
        quad = []
        for i, b in enumerate(bins):
            per_bin = (width if i % 2 == 0 else height) / LOC_BINS
            quad.append(int((int(b) + 0.5) * per_bin))
        out.append((content.strip(), quad))
    return out


class Florence2Reader:
    def __init__(self, engines: dict[str, Engine], max_new_tokens: int = 64, suppress: tuple[int, ...] = (), task: str = "<OCR>"):
        missing = [r for r in ROLES if r not in engines]
        if missing:
            raise EngineMismatch(f"a Florence-2 stage needs graphs {', '.join(missing)}")
        self.engines = engines
        meta = engines["embed"].metadata()
        try:
            self.tokenizer = Tokenizer.from_str(meta["tokenizer.json"])
            self.generation = json.loads(meta["generation.json"])
        except (KeyError, ValueError) as exc:
            raise EngineMismatch(f"the Florence-2 embed graph lacks its tokenizer / generation metadata: {exc}") from None
        if task not in self.generation["prompts"]:
            raise EngineMismatch(f"task {task!r} unknown; the engine set has {sorted(self.generation['prompts'])}")
        self.prompt = np.array([self.generation["prompts"][task]], np.int64)
        self.image_tokens = int(self.generation["image_tokens"])
        self.layers = int(self.generation["layers"])
        self.size = int(engines["vision"].io.inputs[0].shape[1])
        self.max_new_tokens = max_new_tokens
        self.suppress = tuple(suppress)
        self.past_names = [f"past.{i}.{w}" for i in range(self.layers) for w in ("key", "value")]
        self.present_names = [f"present.{i}.{w}" for i in range(self.layers) for w in ("key", "value")]
        self.cross_names = [f"cross.{i}.{w}" for i in range(self.layers) for w in ("key", "value")]
        self._keep = frozenset(self.present_names + self.cross_names)
        self._local = threading.local()
        self.gated = 0  # images the text-presence gate kept from the decoder

    def _slots(self) -> dict:
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = {role: self.engines[role].slot() for role in ROLES}
        return slots

    def _pick(self, logits: np.ndarray) -> int:
        row = logits[0, -1].astype(np.float64, copy=True)
        if self.suppress:
            row[list(self.suppress)] = -np.inf
        return int(row.argmax())

    def generate(self, rgb: np.ndarray) -> list[int]:
        """Greedy token ids after the decoder start token (the end token included when reached)."""
        s = self._slots()
        pixels = resize_to(rgb, self.size)[None]
        features = s["vision"].infer({"pixels": pixels})["image_features"]
        embeds = s["embed"].infer({"input_ids": self.prompt})["embeds"]
        embeds = np.ascontiguousarray(np.concatenate([features, embeds[:, features.shape[1]:]], axis=1), dtype=np.float32)
        mask = np.ones(self.prompt.shape, np.int64)
        hidden = s["encoder"].infer({"inputs_embeds": embeds, "attention_mask": mask})["hidden"]
        start = np.array([[self.generation["decoder_start_token_id"]]], np.int64)
        # The caches stay in the backend between steps (`infer_keep`): no copy per token.
        keep = self._keep
        out = s["decoder"].infer_keep({"input_ids": start, "encoder_hidden_states": hidden, "encoder_attention_mask": mask}, keep)
        cross = {n: out[n] for n in self.cross_names}
        past = {p: out[q] for p, q in zip(self.past_names, self.present_names)}
        tokens: list[int] = []
        eos = int(self.generation["eos_token_id"])
        for _ in range(self.max_new_tokens):
            token = self._pick(out["logits"])
            tokens.append(token)
            if token == eos:
                break
            feeds = {"input_ids": np.array([[token]], np.int64), "encoder_hidden_states": hidden, "encoder_attention_mask": mask, **past, **cross}
            out = s["decoder_with_past"].infer_keep(feeds, keep)
            past = {p: out[q] for p, q in zip(self.past_names, self.present_names)}
        return tokens

    def has_text(self, rgb: np.ndarray) -> bool:
        """The text-presence gate: PP-OCR's detector finds at least one text box."""
        if "detector" not in self.engines:
            return True
        from .ppocr import detector_input, text_boxes

        slot = self._gate_slot()
        detector = self.engines["detector"]
        prob = next(iter(slot.infer({detector.io.inputs[0].name: detector_input(rgb, 736)}).values()))[0, 0]
        return bool(text_boxes(prob, rgb.shape[:2]))

    def _gate_slot(self):
        slot = getattr(self._local, "gate", None)
        if slot is None:
            slot = self._local.gate = self.engines["detector"].slot()
        return slot

    def read_regions(self, rgb: np.ndarray) -> list[tuple[str, list[int]]]:
        """`<OCR_WITH_REGION>`: text lines with their quad boxes in `rgb`'s pixels."""
        prompt, self.prompt = self.prompt, np.array([self.generation["prompts"]["<OCR_WITH_REGION>"]], np.int64)
        try:
            tokens = self.generate(rgb)
        finally:
            self.prompt = prompt
        text = self.tokenizer.decode(tokens, skip_special_tokens=False)
        return parse_ocr_with_region(text, (rgb.shape[1], rgb.shape[0]))

    def read(self, rgb: np.ndarray) -> list[tuple[str, float]]:
        """The `<OCR>` answer as one line (confidence not modelled: 1.0); nothing, without
        decoding, when the gate sees no text."""
        if not self.has_text(rgb):
            self.gated += 1
            return []
        text = self.tokenizer.decode(self.generate(rgb), skip_special_tokens=True).strip()
        return [(text, 1.0)] if text else []
