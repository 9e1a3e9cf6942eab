"""Backend registry: a name maps to `module:Class`, imported only when asked for, so
`tensorrt` is never imported on a machine that does not use it. Adding a backend is one file
here and one line below (and its builder in compile/targets/)."""

from __future__ import annotations

from streetcascade.registry import Registry

from .base import Backend, Closeable, Engine, GraphIO, MemoryAccount, Slot, TensorSpec

BACKENDS = Registry("backend", {
    "onnxruntime": "streetcascade.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "fake": "streetcascade.runtime.backends.fake:FakeBackend",
    "tensorrt": "streetcascade.runtime.backends.tensorrt:TensorRTBackend",
    "aoti": "streetcascade.runtime.backends.aoti:AotiBackend",
    "openvino": "streetcascade.runtime.backends.openvino:OpenVinoBackend",
})


def backend_names() -> list[str]:
    return BACKENDS.names()


def get_backend(name: str) -> Backend:
    return BACKENDS.get(name)()


__all__ = ["Backend", "Closeable", "Engine", "GraphIO", "MemoryAccount", "Slot", "TensorSpec", "backend_names", "get_backend"]
