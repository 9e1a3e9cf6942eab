"""Backend registry: a name maps to `module:Class`, imported only when asked for, so
`tensorrt` is never imported on a machine that does not use it. Adding a backend is one file
here and one line below (and its builder in compile/targets/)."""

from __future__ import annotations

import importlib

from streetcascade.errors import BackendUnavailable, ConfigError

from .base import Backend, Closeable, Engine, GraphIO, MemoryAccount, Slot, TensorSpec

_REGISTRY: dict[str, str] = {
    "onnxruntime": "streetcascade.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "fake": "streetcascade.runtime.backends.fake:FakeBackend",
}


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(backend_names())}")
    module_name, _, class_name = _REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"backend {name!r} cannot be imported here: {exc}") from exc
    return getattr(module, class_name)()


__all__ = ["Backend", "Closeable", "Engine", "GraphIO", "MemoryAccount", "Slot", "TensorSpec", "backend_names", "get_backend"]
