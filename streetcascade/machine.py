"""What machine is this: architecture, CPU ISA features, library versions. Used to name
targets at compile time and to refuse mismatched engine sets at load time."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from functools import lru_cache
from pathlib import Path

# Features that change which kernels ONNX Runtime's optimiser and MLAS pick.
RELEVANT_CPU_FEATURES = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve")


@lru_cache(maxsize=1)
def cache_dir() -> Path:
    """Where downloads and derived files made once are kept: $STREETCASCADE_CACHE, else
    ~/.cache/streetcascade (PP-OCR models, AutoAWQ float copies, the test venvs)."""
    return Path(os.environ.get("STREETCASCADE_CACHE") or Path.home() / ".cache" / "streetcascade")


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


def trim_heap() -> None:
    """Hand the C heap's free memory back to the system (glibc `malloc_trim`; nothing elsewhere),
    so that what a measured stretch of work allocates shows up as resident growth instead of
    quietly reusing memory that earlier work freed but the allocator kept (a compile process
    keeps gigabytes of it: the model, its export, the parsed graph)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset this process's resident high-water mark (VmHWM) to its current size (Linux 4.0+:
    /proc/self/clear_refs "5"); False when that cannot be done here."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's resident high-water mark (VmHWM; Linux); 0 when unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), 0)
    except (OSError, ValueError):
        return 0


def host_memory_growth(work) -> int:
    """Bytes of host memory `work()` needs on top of what this process holds: the heap trimmed
    first (`trim_heap`), then the larger of its peak (VmHWM, reset before) and what it still
    holds after (an arena that keeps its high-water mark) over the resident size before."""
    trim_heap()
    peak_known = reset_peak_rss()
    before = rss_bytes()
    work()
    after = rss_bytes()
    return max(0, max(peak_rss_bytes() if peak_known else 0, after) - before)


def rss_bytes() -> int:
    """Current resident set size of this process (Linux); 0 when unknown."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
