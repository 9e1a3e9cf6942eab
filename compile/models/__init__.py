"""Model family registry: a name maps to a module exposing `FAMILY` (a `base.ModelFamily`).
Adding a family is adding a file and a line here."""

from __future__ import annotations

import importlib

from streetcascade.errors import ConfigError

_FAMILIES = {
    "dinov3": "streetcascade.compile.models.dinov3",
    "hf-classifier": "streetcascade.compile.models.hf_classifier",
}


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str):
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(family_names())}")
    return importlib.import_module(_FAMILIES[name]).FAMILY
