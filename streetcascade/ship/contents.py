"""What the online side of one engine set needs: which of our modules, which distributions.

Our code: the runtime, the miner, the artifact's own entry point and the light core modules
they import; never compile/, calibration/, the CLI, progress bars or bench/tests (a test
imports every module listed here with those blocked). Distributions: the core set, the miner's,
one backend's and what the engine set's stage kinds need, named here and given the version
specifiers of the installed streetcascade's own metadata (pyproject.toml stays the one place
versions are declared).
"""

from __future__ import annotations

import importlib.metadata
import re

from streetcascade.errors import ConfigError
from streetcascade.manifest import Manifest

# Files of the `streetcascade` package the online side imports (tests/ship/test_contents.py
# imports each of them with the offline side blocked).
CORE_MODULES = ("__init__", "config", "errors", "evidence", "gpu", "machine", "manifest", "registry", "settings", "sizing", "structs", "vlm")
SUBPACKAGES = ("runtime", "miner")  # whole, as installed (runtime/backends included)
SHIP_MODULES = ("__init__", "bundle", "entry")

# Always: what runtime/ and miner/ import at the top (numpy, pillow, msgspec; uvicorn with
# httptools and uvloop, the hotkey's sr25519, Prometheus).
BASE = ("numpy", "pillow", "msgspec", "uvicorn", "httptools", "uvloop", "bittensor-wallet", "prometheus-client")
# The engine set's backend on its device: what its runtime/backends/<name>.py imports.
BACKENDS = {
    ("onnxruntime", "cpu"): ("onnxruntime",),
    ("onnxruntime", "cuda"): ("onnxruntime-gpu",),
    ("openvino", "cpu"): ("openvino",),
    ("tensorrt", "cuda"): ("tensorrt", "cuda-python"),
    # AOTInductor packages are run by torch itself: the one backend whose artifact holds torch.
    ("aoti", "cpu"): ("torch",),
    ("aoti", "cuda"): ("torch",),
}
# Per stage kind / family, what its run-time code imports.
STAGE_KINDS = {"ocr": ("opencv-python-headless", "rapidfuzz")}
FAMILIES = {"florence2": ("tokenizers",)}
# [chain] metagraph = "chain" reads the metagraph through the bittensor SDK (miner/chain.py).
CHAIN = ("bittensor", "async-substrate-interface")
# [engine] ray_address sends the stages to a Ray Serve application (runtime/ray_stage.py).
RAY = ("ray",)
# Never in an artifact, whatever pulls them in (checked after resolving).
FORBIDDEN = ("torch", "transformers", "onnx", "onnxscript", "safetensors", "nncf", "pytest")


def requirement_names(manifest: Manifest, chain: bool, ray: bool = False) -> list[str]:
    key = (manifest.target.backend, manifest.target.device)
    if key not in BACKENDS:
        raise ConfigError(f"cannot package an engine set for backend {key[0]} on {key[1]}; known: "
                          + ", ".join(f"{b} on {d}" for b, d in BACKENDS))
    names = [*BASE, *BACKENDS[key]]
    for stage in manifest.stages:
        names += STAGE_KINDS.get(stage.kind, ()) + FAMILIES.get(stage.family, ())
    if chain:
        names += CHAIN
    if ray:
        names += RAY
    return list(dict.fromkeys(names))


def forbidden_for(manifest: Manifest) -> set[str]:
    allowed = set(BACKENDS.get((manifest.target.backend, manifest.target.device), ()))
    return {n for n in FORBIDDEN if n not in allowed}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_specifiers(dist: str = "streetcascade") -> dict[str, str]:
    """name -> "name>=x" (with its environment marker) from the installed package's metadata,
    so the versions the artifact accepts are the ones pyproject.toml declares."""
    out: dict[str, str] = {}
    for line in importlib.metadata.requires(dist) or []:
        spec, _, marker = line.partition(";")
        marker = re.sub(r"\s*(and\s+)?extra\s*==\s*['\"][^'\"]+['\"]", "", marker).strip()
        marker = re.sub(r"^and\s+", "", marker)
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0)
        out.setdefault(normalise(name), spec.strip() + (f"; {marker}" if marker else ""))
    return out


def requirements(names: list[str], pin_installed: bool) -> list[str]:
    """Requirement strings: the installed version pinned (`pin_installed`: the artifact holds
    what was tested here), else pyproject's specifier, else the bare name."""
    declared = declared_specifiers()
    out = []
    for name in names:
        spec = declared.get(normalise(name), name)
        if pin_installed:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = None
            if version:
                marker = spec.partition(";")[2].strip()
                extras = re.match(r"[A-Za-z0-9._-]+(\[[^\]]*\])?", spec).group(1) or ""  # ray[serve]
                spec = f"{name}{extras}=={version}" + (f"; {marker}" if marker else "")
        out.append(spec)
    return out
