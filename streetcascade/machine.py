"""What machine is this: architecture, CPU ISA features, library versions. Used to name
targets at compile time and to refuse mismatched engine sets at load time."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from functools import lru_cache

# Features that change which kernels ONNX Runtime's optimiser and MLAS pick.
RELEVANT_CPU_FEATURES = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve")


@lru_cache(maxsize=1)
def cpu_features() -> tuple[str, ...]:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return tuple(sorted(f for f in flags if f in RELEVANT_CPU_FEATURES))


def arch() -> str:
    return platform.machine() or "unknown"


def default_target_name(device: str) -> str:
    return f"{device}-{arch()}" if device == "cpu" else f"{device}-unknown"


def physical_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def version_of(package: str) -> str | None:
    """The installed distribution's version, else an imported module's `__version__` (some GPU
    wheels install the `tensorrt` module under another distribution name)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(package)
        version = getattr(module, "__version__", None)
        return str(version) if version else None


def rss_bytes() -> int:
    """Current resident set size of this process (Linux); 0 when unknown."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
