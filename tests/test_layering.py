"""The house rules, checked on the source: online code never imports offline code, only the
backends and the compiler import onnxruntime, calibration/ imports nothing from compile/, and
the installed wheel holds the product only (no benchmarks, no test clients)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from support import REPO

PACKAGE_DIRS = {"streetcascade": "streetcascade", "compile": "streetcascade.compile", "calibration": "streetcascade.calibration",
                "runtime": "streetcascade.runtime", "miner": "streetcascade.miner"}


def _modules():
    """(module name, path) for every source file of the installed package."""
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            yield ".".join((package, *parts)), path


def _imports(module: str, path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (lazy imports inside functions too)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


IMPORTS = {module: (path, _imports(module, path)) for module, path in _modules()}


def _importers(prefix: str) -> set[str]:
    return {m for m, (_, imported) in IMPORTS.items() if any(i == prefix or i.startswith(prefix + ".") for i in imported)}


def test_the_scan_sees_the_package():
    assert "streetcascade.runtime.backends.onnxruntime" in IMPORTS and "streetcascade.miner.axon_app" in IMPORTS
    assert "streetcascade.compile.targets.onnxruntime" in _importers("streetcascade.runtime.backends")


def test_only_backends_and_the_compiler_import_onnxruntime():
    allowed = ("streetcascade.runtime.backends.", "streetcascade.compile.")
    offenders = sorted(m for m in _importers("onnxruntime") if not m.startswith(allowed))
    assert offenders == []
    assert "streetcascade.runtime.backends.onnxruntime" in _importers("onnxruntime")  # the check can fail


def test_calibration_imports_nothing_from_compile():
    offenders = sorted(m for m in _importers("streetcascade.compile") if m.startswith("streetcascade.calibration"))
    assert offenders == []


# The AOTInductor backend runs PyTorch-compiled packages: torch is its runtime library (as
# onnxruntime is the ONNX Runtime backend's). It is imported only when an engine set asks for it.
RUNTIME_LIBRARIES = {"streetcascade.runtime.backends.aoti": {"torch"}}


def test_online_code_imports_nothing_offline():
    online = ("streetcascade.runtime", "streetcascade.miner")
    for offline in ("streetcascade.compile", "streetcascade.calibration", "torch", "transformers", "onnx"):
        offenders = sorted(m for m in _importers(offline) if m.startswith(online) and offline not in RUNTIME_LIBRARIES.get(m, ()))
        assert offenders == [], offline


def test_wheel_holds_the_product_only(tmp_path):
    """Build the wheel from a clean copy of the sources (no stale build/ folder can leak in), bench/
    and tests/ included in the copy: they must stay out of the wheel."""
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    for folder in (*PACKAGE_DIRS, "bench", "tests"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "streetcascade/runtime/backends/onnxruntime.py" in names and "streetcascade/miner/axon_app.py" in names
    assert not [n for n in names if "bench" in n.split("/") or "client" in n.rsplit("/", 1)[-1]]
    assert not [n for n in names if n.startswith("tests/") or n.startswith("bench/")]


def test_only_the_ray_modules_import_ray():
    """Ray (the `ray` extra) stays inside the application and the miner's remote stages."""
    offenders = sorted(m for m in _importers("ray") if m not in ("streetcascade.runtime.ray_app", "streetcascade.runtime.ray_stage"))
    assert offenders == []
    assert "streetcascade.runtime.ray_stage" in _importers("ray")  # the check can fail
