"""Backend registry: a name maps to a module path + class, imported only when asked for,
so `tensorrt` is never imported on a machine that does not use it."""

from __future__ import annotations

import importlib

from streetcascade.errors import BackendUnavailable, ConfigError

from .base import Backend, Engine, Slot, TensorSpec

_REGISTRY: dict[str, str] = {
    "onnxruntime": "streetcascade.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "fake": "streetcascade.runtime.backends.fake:FakeBackend",
}


def register_backend(name: str, target: str) -> None:
    """Register `module:Class` under `name` (used by tests and future backends)."""
    _REGISTRY[name] = target


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str, **kwargs) -> Backend:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(backend_names())}")
    module_name, _, class_name = _REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"backend {name!r} cannot be imported here: {exc}") from exc
    return getattr(module, class_name)(**kwargs)


__all__ = ["Backend", "Engine", "Slot", "TensorSpec", "get_backend", "register_backend", "backend_names"]
