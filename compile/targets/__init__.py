"""Compile-target registry: a backend name maps to the module whose `TARGET` builds engines
for it. Adding a backend is one file here, one in runtime/backends/, and a line in each registry."""

from __future__ import annotations

import importlib

from streetcascade.errors import BackendUnavailable, ConfigError

from .base import BuildJob, BuiltGraph, Target

_TARGETS = {
    "onnxruntime": "streetcascade.compile.targets.onnxruntime",
    "fake": "streetcascade.compile.targets.fake",
}


def target_names() -> list[str]:
    return sorted(_TARGETS)


def get_target(name: str) -> Target:
    if name not in _TARGETS:
        raise ConfigError(f"target.backend {name!r} cannot be compiled for; known: {', '.join(target_names())}")
    try:
        return importlib.import_module(_TARGETS[name]).TARGET
    except ImportError as exc:
        raise BackendUnavailable(f"the {name} target cannot be imported here: {exc}") from exc


__all__ = ["BuildJob", "BuiltGraph", "Target", "get_target", "target_names"]
