"""What goes into a one-file artifact: our online modules only (each imports with the offline
side blocked), and the distributions one engine set needs (its backend, its stage kinds)."""

from __future__ import annotations

import msgspec
import pytest
from support import run_python

from streetcascade.errors import ConfigError
from streetcascade.manifest import read_manifest
from streetcascade.ship import contents

# What an artifact never holds: importing any of these inside it must not be needed.
OFFLINE = ("torch", "transformers", "onnx", "onnxscript", "safetensors", "rich", "tomlkit", "pytest",
           "streetcascade.compile", "streetcascade.calibration", "streetcascade.cli", "streetcascade.progress", "bench")


def online_modules() -> list[str]:
    from pathlib import Path

    import streetcascade

    root = Path(streetcascade.__file__).parent
    mods = [f"streetcascade.{m}" if m != "__init__" else "streetcascade" for m in contents.CORE_MODULES]
    mods += [f"streetcascade.ship.{m}" if m != "__init__" else "streetcascade.ship" for m in contents.SHIP_MODULES]
    for sub in contents.SUBPACKAGES:
        package = __import__(f"streetcascade.{sub}", fromlist=["_"])
        folder = Path(package.__file__).parent
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            mods.append(".".join(("streetcascade", sub, *parts)))
    assert "streetcascade.miner.server" in mods and "streetcascade.runtime.backends.onnxruntime" in mods and root.is_dir()
    return mods


# Backends whose library is not installed here (or is torch, the AOTInductor backend's runtime).
NEEDS_ABSENT_LIBRARY = {"streetcascade.runtime.backends.aoti", "streetcascade.runtime.backends.tensorrt", "streetcascade.runtime.cuda"}


def test_every_packed_module_imports_without_the_offline_side():
    mods = [m for m in online_modules() if m not in NEEDS_ABSENT_LIBRARY]
    block = "import sys\nfor name in %r:\n    sys.modules[name] = None\n" % (OFFLINE,)
    code = block + "import importlib\nfor m in %r:\n    importlib.import_module(m)\nprint(len(%r))" % (mods, mods)
    r = run_python(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.strip()) == len(mods) > 40


def test_the_block_is_not_vacuous():
    """An offline module that needs a blocked library fails to import under the same block."""
    r = run_python("import sys\nsys.modules['torch'] = None\nimport streetcascade.compile.models.base")
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr


def test_requirements_follow_the_engine_set(tiny_engine_dir):
    manifest = read_manifest(tiny_engine_dir)
    names = contents.requirement_names(manifest, chain=False)
    assert names[: len(contents.BASE)] == list(contents.BASE)
    assert "onnxruntime" in names and "openvino" not in names and "onnxruntime-gpu" not in names
    assert not set(names) & set(contents.FORBIDDEN)
    assert "opencv-python-headless" not in names and "bittensor" not in names

    on_gpu = msgspec.structs.replace(manifest, target=msgspec.structs.replace(manifest.target, device="cuda"))
    assert "onnxruntime-gpu" in contents.requirement_names(on_gpu, chain=False)
    ov = msgspec.structs.replace(manifest, target=msgspec.structs.replace(manifest.target, backend="openvino"))
    assert "openvino" in contents.requirement_names(ov, chain=False) and "onnxruntime" not in contents.requirement_names(ov, chain=False)
    ocr = msgspec.structs.replace(manifest, stages=[*manifest.stages, msgspec.structs.replace(manifest.stages[0], kind="ocr", family="florence2")])
    names = contents.requirement_names(ocr, chain=True)
    assert {"opencv-python-headless", "rapidfuzz", "tokenizers", "bittensor"} <= set(names)
    aoti = msgspec.structs.replace(manifest, target=msgspec.structs.replace(manifest.target, backend="aoti"))
    assert "torch" in contents.requirement_names(aoti, chain=False) and "torch" not in contents.forbidden_for(aoti)


def test_an_unknown_backend_is_refused(tiny_engine_dir):
    manifest = read_manifest(tiny_engine_dir)
    odd = msgspec.structs.replace(manifest, target=msgspec.structs.replace(manifest.target, backend="fake"))
    with pytest.raises(ConfigError, match="cannot package an engine set for backend fake"):
        contents.requirement_names(odd, chain=False)


def test_versions_come_from_pyproject_and_the_installed_set():
    declared = contents.declared_specifiers()
    assert declared["uvicorn"].startswith("uvicorn>=") and declared["onnxruntime"].startswith("onnxruntime>=")
    assert "extra" not in declared["uvloop"] and "sys_platform" in declared["uvloop"]  # the extra marker goes, the platform one stays
    pinned = contents.requirements(["numpy", "uvloop", "surely-not-installed-xyz"], pin_installed=True)
    import numpy

    assert pinned[0] == f"numpy=={numpy.__version__}"
    assert pinned[1].startswith("uvloop==") and "sys_platform" in pinned[1]
    assert pinned[2] == "surely-not-installed-xyz"
