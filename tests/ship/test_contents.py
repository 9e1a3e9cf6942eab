"""What goes into a one-file artifact: our online modules only (each imports with the offline
side blocked), and the distributions one engine set needs (its backend, its stage kinds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from support import run_python

from streetcascade.errors import ConfigError
from streetcascade.manifest import read_manifest
from streetcascade.ship import contents
from streetcascade.ship.build import PackageOptions, stage_sources

# What an artifact never holds: importing any of these inside it must not be needed.
OFFLINE = ("torch", "transformers", "onnx", "onnxscript", "safetensors", "rich", "tomlkit", "pytest",
           "streetcascade.compile", "streetcascade.calibration", "streetcascade.cli", "streetcascade.progress", "bench")


def staged_modules(stage: Path) -> list[str]:
    """Every module of the staged `streetcascade` tree."""
    out = []
    for path in sorted((stage / "streetcascade").rglob("*.py")):
        parts = path.relative_to(stage).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


# Backends whose library is not installed here (or is torch, the AOTInductor backend's runtime).
NEEDS_ABSENT_LIBRARY = {"streetcascade.runtime.backends.aoti", "streetcascade.runtime.backends.tensorrt", "streetcascade.runtime.cuda",
                        # Ray Serve, only for [engine] ray_address (then the artifact carries ray).
                        "streetcascade.runtime.ray_app", "streetcascade.runtime.ray_stage"}


def test_every_packed_module_imports_from_the_staged_tree_alone(tmp_path, tiny_engine_dir):
    """What `package` stages is complete: each module imports with only the staged tree and the
    third-party site-packages on the path (no checkout, no editable install: `python -S`), and
    with the offline side blocked."""
    import site

    config = tmp_path / "miner.toml"
    config.write_text("[[hotkeys]]\nport = 8091\nwallet_name = 'm'\nwallet_hotkey = 'h'\n")
    stage = tmp_path / "src"
    stage_sources(stage, PackageOptions(engines=tiny_engine_dir, config=config, out=tmp_path / "x.pex"), read_manifest(tiny_engine_dir),
                  None, [], "pex test", "3.11", "linux-x86_64")
    mods = [m for m in staged_modules(stage) if m not in NEEDS_ABSENT_LIBRARY]
    assert {"streetcascade.miner.server", "streetcascade.runtime.backends.onnxruntime", "streetcascade.ship.entry"} <= set(mods)
    path = [str(stage), *site.getsitepackages()]
    code = (f"import sys\nsys.path[:] = {path!r} + [p for p in sys.path if 'site-packages' not in p]\n"
            f"for name in {OFFLINE!r}:\n    sys.modules[name] = None\n"
            f"import importlib\nfor m in {mods!r}:\n    importlib.import_module(m)\n"
            f"import streetcascade\nassert streetcascade.__file__.startswith({str(stage)!r}), streetcascade.__file__\nprint(len({mods!r}))")
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.strip()) == len(mods) > 40


def modules_of_checkout() -> set[str]:
    from support import REPO

    prefixes = {"streetcascade": "streetcascade", "compile": "streetcascade.compile", "calibration": "streetcascade.calibration",
                "runtime": "streetcascade.runtime", "miner": "streetcascade.miner"}
    out = set()
    for folder, package in prefixes.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            out.add(".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return out


def test_every_streetcascade_import_of_the_packed_code_is_packed(tmp_path, tiny_engine_dir):
    """Lazy imports too (inside functions), found by reading the source: whatever of ours the
    packed modules import is in the artifact."""
    import ast

    config = tmp_path / "miner.toml"
    config.write_text("[[hotkeys]]\nport = 8091\nwallet_name = 'm'\nwallet_hotkey = 'h'\n")
    stage = tmp_path / "src"
    stage_sources(stage, PackageOptions(engines=tiny_engine_dir, config=config, out=tmp_path / "x.pex"), read_manifest(tiny_engine_dir),
                  None, [], "pex test", "3.11", "linux-x86_64")
    packed, checkout = set(staged_modules(stage)), modules_of_checkout()
    missing = set()
    for path in (stage / "streetcascade").rglob("*.py"):
        module = ".".join(path.relative_to(stage).with_suffix("").parts)
        package = module.rsplit(".", 1)[0]  # of a module, and of an __init__ (module "<package>.__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            names, all_modules = [], False
            if isinstance(node, ast.Import):
                names, all_modules = [a.name for a in node.names], True
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base]) if base else ".".join(anchor)
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for i, name in enumerate(names):
                # The module imported from must be packed; a name imported from it must be, too,
                # when it is one of our modules (`from streetcascade import progress`).
                is_module = all_modules or i == 0 or name in checkout
                if name.startswith("streetcascade") and is_module and name not in packed:
                    missing.add(f"{module} -> {name}")
    assert missing == set()


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
    names = contents.requirement_names(ocr, chain=True, ray=True)
    assert {"opencv-python-headless", "rapidfuzz", "tokenizers", "bittensor", "ray"} <= set(names)
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
    declared_ray = contents.requirements(["ray"], pin_installed=False)[0]
    assert declared_ray.startswith("ray[serve]")  # the extra survives, pinned or not
    pinned = contents.requirements(["numpy", "uvloop", "surely-not-installed-xyz"], pin_installed=True)
    import numpy

    assert pinned[0] == f"numpy=={numpy.__version__}"
    assert pinned[1].startswith("uvloop==") and "sys_platform" in pinned[1]
    assert pinned[2] == "surely-not-installed-xyz"
