"""Run streetcascade from a checkout in a Python that has PyTorch but not the project: the lent
GPU machine (its `python3` is a virtualenv with torch + CUDA, no package index, no TensorRT).
Standard library only: it runs before anything else is importable.

- No new virtualenv: one made from a virtualenv's Python (even `--system-site-packages`) loses
  that Python's packages, torch among them (what broke the first GPU check).
- No editable install: `pip install -e .` needs a build backend (setuptools >= 68) in that
  Python and writes into its environment. The missing wheels go into a folder DIR instead
  (`pip install --no-index --no-deps --target DIR` from the carried wheelhouse, or plain
  unzipping when that Python has no pip), and the checkout itself is importable as it is:
  streetcascade/__init__.py adds the checkout root to the package's __path__ when it runs from
  a checkout, so `streetcascade.compile` is ./compile (pyproject.toml's package-dir mapping)
  with PYTHONPATH=DIR:checkout, whatever order pytest puts the checkout in.

    python3 bench/checkout_env.py DIR [--wheelhouse .gpu-wheelhouse]

prints ONE line saying what was missing, what was installed and what is still missing, and
exits 1 when something the check cannot run without is still missing.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> wheel (distribution) name. REQUIRED: nothing in the check runs without them;
# OPTIONAL: steps that need them skip, saying so.
# (rich draws progress bars only when asked: the check never asks.)
REQUIRED = {"numpy": "numpy", "PIL": "pillow", "msgspec": "msgspec", "tomlkit": "tomlkit", "torch": "torch", "pytest": "pytest",
            "tomli_w": "tomli-w"}
OPTIONAL = {"transformers": "transformers", "safetensors": "safetensors", "onnxruntime": "onnxruntime", "onnx": "onnx", "rich": "rich",
            "cuda.bindings": "cuda-bindings", "tensorrt": "tensorrt"}


def missing(names: dict[str, str]) -> list[str]:
    out = []
    for module in names:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(module)
    return out


def wheels_for(wheelhouse: Path, dist: str) -> list[Path]:
    key = re.sub(r"[-_.]+", "_", dist).lower()
    return sorted(p for p in wheelhouse.glob("*.whl") if re.sub(r"[-_.]+", "_", p.name.split("-")[0]).lower() == key)


def install(wheels: list[Path], target: Path) -> str:
    """pip --no-index --target, or unzip when this Python has no pip; returns how."""
    # PathFinder, not importlib.util.find_spec: asking the meta path for "pip" trips setuptools'
    # distutils hack into "pip is running" mode for the rest of the process.
    if importlib.machinery.PathFinder.find_spec("pip") is not None and not os.environ.get("GPU_CHECK_NO_PIP"):
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--disable-pip-version-check",
                            "--target", str(target), *map(str, wheels)], capture_output=True, text=True)
        if r.returncode == 0:
            return "pip --target"
        sys.stderr.write(r.stdout + r.stderr)
    for wheel in wheels:  # a wheel is a zip of what goes on sys.path
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
    return "unzipped"


def prepare(target: Path, wheelhouse: Path, root: Path = ROOT) -> tuple[str, bool]:
    """Install what is missing and can be, link the package; (the one-line report, ok)."""
    target.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(target), str(root)]
    importlib.invalidate_caches()
    need = missing(REQUIRED) + missing(OPTIONAL)
    carried = {m: wheels_for(wheelhouse, {**REQUIRED, **OPTIONAL}[m]) for m in need} if wheelhouse.is_dir() else {}
    wheels = [w for m in need for w in carried.get(m, [])]
    how = install(wheels, target) if wheels else ""
    importlib.invalidate_caches()
    still_required, still_optional = missing(REQUIRED), missing(OPTIONAL)
    importable = importlib.util.find_spec("streetcascade.compile.targets") is not None
    need_required = [REQUIRED[m] for m in need if m in REQUIRED]
    parts = [f"dependencies: required and missing here: {', '.join(need_required) or 'nothing'}"]
    if wheels:
        parts.append(f"installed from {wheelhouse.name}/ ({how}): {', '.join(w.name.split('-')[0] for w in wheels)}")
    elif need and not wheelhouse.is_dir():
        parts.append(f"no {wheelhouse.name}/ carried (make gpu-wheelhouse)")
    parts.append(f"still missing: {', '.join(REQUIRED[m] for m in still_required) or 'nothing required'}")
    if still_optional:
        parts.append(f"optional absent: {', '.join(OPTIONAL[m] for m in still_optional)}")
    parts.append(f"streetcascade {'importable' if importable else 'NOT importable'} from the checkout")
    return "; ".join(parts), not still_required and importable


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", type=Path, help="folder to put first on PYTHONPATH")
    ap.add_argument("--wheelhouse", type=Path, default=ROOT / ".gpu-wheelhouse")
    args = ap.parse_args(argv)
    line, ok = prepare(args.target.resolve(), args.wheelhouse)
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
