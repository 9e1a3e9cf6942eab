"""Compile-target registry: a backend name maps to the `TARGET` that builds engines for it.
Adding a backend is one file here, one in runtime/backends/, and a line in each registry."""

from __future__ import annotations

from streetcascade.registry import Registry

from .base import BuildJob, BuiltGraph, Target

TARGETS = Registry("compile target (target.backend)", {
    "onnxruntime": "streetcascade.compile.targets.onnxruntime:TARGET",
    "fake": "streetcascade.compile.targets.fake:TARGET",
    "tensorrt": "streetcascade.compile.targets.tensorrt:TARGET",
    "aoti": "streetcascade.compile.targets.aoti:TARGET",
    "openvino": "streetcascade.compile.targets.openvino:TARGET",
})


AUTO = "auto"
# What `[target] backend = "auto"` chooses between on a CPU (compile.pipeline times them).
CPU_TARGETS = ("onnxruntime", "openvino")


def engine_set_name(config) -> str:
    """The engine set's folder name under engines_dir: the target's own name, or for auto the
    machine's CPU name (one engine set per machine, whichever backend won)."""
    from streetcascade.machine import default_target_name

    if config.target.backend == AUTO:
        return config.target.name or default_target_name("cpu")
    return get_target(config.target.backend).describe(config).name


def target_names() -> list[str]:
    return TARGETS.names()


def get_target(name: str) -> Target:
    return TARGETS.get(name)


def detect_gpu_target() -> str:
    """The best GPU target this machine can build (a `compile-engines --target` name):
    TensorRT, else ONNX Runtime's CUDA provider, else AOTInductor; says what is missing when
    none is possible."""
    from streetcascade.errors import BackendUnavailable
    from streetcascade.gpu import require_gpu

    gpu = require_gpu(what="compile-engines")
    tried = []
    try:
        import tensorrt  # noqa: F401

        return "tensorrt"
    except ImportError as exc:
        tried.append(f"tensorrt: {exc}")
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "ort-cuda"
        tried.append(f"onnxruntime {onnxruntime.__version__}: no CUDA provider (install onnxruntime-gpu)")
    except ImportError as exc:
        tried.append(f"onnxruntime: {exc}")
    try:
        import torch

        if torch.cuda.is_available():
            return "aoti"
        tried.append(f"torch {torch.__version__}: no CUDA")
    except ImportError as exc:
        tried.append(f"torch: {exc}")
    raise BackendUnavailable(f"{gpu.name} found, but nothing here can build for it: {'; '.join(tried)}")


__all__ = ["AUTO", "CPU_TARGETS", "BuildJob", "BuiltGraph", "Target", "detect_gpu_target", "engine_set_name", "get_target", "target_names"]
