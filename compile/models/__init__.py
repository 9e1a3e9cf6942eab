"""Model family registry: a name maps to the `FAMILY` (a `base.ModelFamily`) of one module.
Adding a family is adding a file and a line here."""

from __future__ import annotations

from streetcascade.registry import Registry

FAMILIES = Registry("model family", {
    "dinov3": "streetcascade.compile.models.dinov3:FAMILY",
    "hf-classifier": "streetcascade.compile.models.hf_classifier:FAMILY",
    "ppocr": "streetcascade.compile.models.ppocr:FAMILY",
    "florence2": "streetcascade.compile.models.florence2:FAMILY",
    "qwen2.5-vl": "streetcascade.compile.models.qwen_vl:QWEN25_FAMILY",
    "qwen3-vl": "streetcascade.compile.models.qwen_vl:QWEN3_FAMILY",
    "smolvlm": "streetcascade.compile.models.smolvlm:FAMILY",
}, unavailable=None)


def family_names() -> list[str]:
    return FAMILIES.names()


def get_family(name: str):
    return FAMILIES.get(name)
