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
})


def target_names() -> list[str]:
    return TARGETS.names()


def get_target(name: str) -> Target:
    return TARGETS.get(name)


__all__ = ["BuildJob", "BuiltGraph", "Target", "get_target", "target_names"]
