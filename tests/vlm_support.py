"""Test helpers for the VLM judges: the models' own processors (image part) and transformers'
answer logits, the references the compiled judge is held against."""

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


def smolvlm_processor(ckpt: Path):
    """SmolVLM / Idefics3's processor: the checkpoint's image processor class (PIL backend),
    tokenizer, chat template and image_seq_len, in `Idefics3Processor`. (SmolVLMProcessor needs
    num2words and, for its video processor, torchvision, which this project does not install; for
    images both write the same prompt: `get_image_prompt_string` / `replace_image_token`.)"""
    from transformers import AutoTokenizer
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.idefics3.processing_idefics3 import Idefics3Processor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    ckpt = Path(ckpt)
    idefics3 = json.loads((ckpt / "config.json").read_text())["model_type"] == "idefics3"
    images = (Idefics3ImageProcessorPil if idefics3 else SmolVLMImageProcessorPil).from_pretrained(ckpt)
    template = json.loads((ckpt / "chat_template.json").read_text())["chat_template"]
    seq_len = json.loads((ckpt / "processor_config.json").read_text())["image_seq_len"]
    return Idefics3Processor(image_processor=images, tokenizer=AutoTokenizer.from_pretrained(ckpt), image_seq_len=seq_len, chat_template=template)


def processor_inputs(processor, image: np.ndarray, question: str = QUESTION, system: str = "", **options):
    """The processor's input_ids and image inputs for one image + question (its chat template
    rendered, then the processor called on text and image, as its apply_chat_template does).
    `options`: the image processor's for this call (Qwen-VL: `size`, its min/max pixels; SmolVLM:
    `do_image_splitting`). Message contents as lists of parts, which every template renders."""
    content = [{"type": "image"}, {"type": "text", "text": question}]
    messages = ([{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []) + [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = [[image]] if "Idefics3" in type(processor).__name__ else [image]
    return processor(text=[text], images=images, return_tensors="pt", **{k: v for k, v in options.items() if v is not None})


def load_model(ckpt: Path, family: str):
    import torch  # noqa: F401
    import transformers

    if family == "smolvlm":
        idefics3 = json.loads((Path(ckpt) / "config.json").read_text())["model_type"] == "idefics3"
        cls = transformers.Idefics3ForConditionalGeneration if idefics3 else transformers.SmolVLMForConditionalGeneration
    else:
        cls = transformers.Qwen2_5_VLForConditionalGeneration if family == "qwen2.5-vl" else transformers.Qwen3VLForConditionalGeneration
    return cls.from_pretrained(ckpt).eval()


def with_one_placeholder(ids: np.ndarray, image_id: int) -> list[int]:
    """A processor's prompt ids with its run of image tokens cut back to one placeholder (what a
    compiled prompt holds)."""
    at = np.flatnonzero(ids == image_id)
    return [int(i) for i in np.concatenate([ids[: at[0] + 1], ids[at[-1] + 1 :]])]


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
