"""Test helpers for the Qwen-VL judge: the models' own processors (image part) and
transformers' answer logits, the references the compiled judge is held against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FAMILIES = ("qwen2.5-vl", "qwen3-vl")
QUESTION = "Is there road work in this image? Answer yes or no."


def reference_processor(ckpt: Path, family: str):
    """The model's real processor class (Qwen2_5_VLProcessor / Qwen3VLProcessor) with its image
    processor and tokenizer. Its video processor needs torchvision, which this project does not
    install, so the class is used without that part: prompts and images go through its own code."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    if family == "qwen2.5-vl":
        from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor as Base
    else:
        from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor as Base

    class ImageOnly(Base):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            self.vision_start_token, self.vision_end_token = "<|vision_start|>", "<|vision_end|>"
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    template = json.loads((Path(ckpt) / "chat_template.json").read_text())["chat_template"]
    return ImageOnly(image_processor=Qwen2VLImageProcessorPil.from_pretrained(ckpt), tokenizer=AutoTokenizer.from_pretrained(ckpt),
                     chat_template=template)


def processor_inputs(processor, image: np.ndarray, question: str = QUESTION, system: str = "", size: dict | None = None):
    """The processor's input_ids, pixel values, grid and token types for one image + question
    (its chat template rendered, then the processor called on text and image, as its
    apply_chat_template does). `size`: the image processor's min/max pixels for this call."""
    content = [{"type": "image"}, {"type": "text", "text": question}]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[image], return_tensors="pt", **({"size": size} if size else {}))


def load_model(ckpt: Path, family: str):
    import torch  # noqa: F401
    import transformers

    cls = transformers.Qwen2_5_VLForConditionalGeneration if family == "qwen2.5-vl" else transformers.Qwen3VLForConditionalGeneration
    return cls.from_pretrained(ckpt).eval()


def transformers_logits(model, inputs, answer_ids: list[int]) -> np.ndarray:
    """transformers' forward (its own rotary index and embedding merge): the answer tokens'
    logits at the last position."""
    import torch

    with torch.no_grad():
        out = model(**inputs)
    return out.logits[:, -1, answer_ids].double().numpy()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
