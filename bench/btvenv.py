"""Throw-away virtualenvs holding a real bittensor SDK (9.12.2 or 10.x), for tests and benchmarks
that compare against, or talk to, the validators' own client/server code.

Cached under ${STREETCASCADE_CACHE:-~/.cache/streetcascade}/btvenv-<version>/ so re-runs are fast;
installed from PyPI with pip (about a minute each on 2 cores, ~190 MB). Never imported by the miner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from streetcascade.machine import cache_dir

# What each SDK generation needs next to it: 9.12.2 breaks with newer async-substrate-interface.
PINS: dict[str, list[str]] = {
    "9.12.2": ["bittensor==9.12.2", "async-substrate-interface==1.6.4", "pillow"],
    "10.5.0": ["bittensor==10.5.0", "pillow"],
}


class VenvError(RuntimeError):
    pass


def ensure_bt_venv(version: str = "9.12.2", quiet: bool = True) -> Path:
    """Return the python executable of a venv with bittensor==version, building it if needed."""
    if version not in PINS:
        raise VenvError(f"no pins for bittensor {version}; known: {sorted(PINS)}")
    root = cache_dir() / f"btvenv-{version}"
    python = root / "bin" / "python"
    marker = root / ".complete"
    pins = " ".join(PINS[version])
    if marker.exists() and python.exists() and marker.read_text().splitlines()[0] == pins:
        return python
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True)
        cmd = [str(tmp / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *PINS[version]]
        if quiet:
            cmd.insert(4, "-q")
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            tail = "\n".join(line for line in res.stderr.splitlines() if "is ignored" not in line)[-2000:]
            raise VenvError(f"pip install {' '.join(PINS[version])} failed:\n{tail}")
        # venvs are not relocatable: rebuild the scripts' paths by recreating in place
        tmp.rename(root)
        subprocess.run([sys.executable, "-m", "venv", "--upgrade", str(root)], check=True, capture_output=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # sanity: the SDK imports
    res = subprocess.run([str(python), "-c", "import bittensor, sys; print(bittensor.__version__)"], capture_output=True, text=True)
    if res.returncode != 0 or version not in res.stdout:
        raise VenvError(f"bittensor {version} does not import in {root}: {res.stderr[-1000:]}")
    marker.write_text(f"{pins}\nbuilt in {time.perf_counter() - t0:.0f} s\n")
    return python


if __name__ == "__main__":
    for v in sys.argv[1:] or list(PINS):
        t = time.perf_counter()
        print(v, ensure_bt_venv(v), f"{time.perf_counter() - t:.0f} s")
