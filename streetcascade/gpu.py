"""Which NVIDIA GPUs this machine has, asked through the CUDA runtime (`cuda-python`,
`from cuda.bindings import runtime`), never by creating a TensorRT Runtime (which segfaults the
process on a machine without a GPU).

The CUDA runtime returns error tuples instead of raising: `cudaGetDeviceCount()` is
`(cudaErrorInsufficientDriver, None)` or `(cudaErrorNoDevice, 0)` on a machine without a usable
GPU, which makes it a safe probe. Without cuda-python installed there is nothing to ask: no GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from streetcascade.errors import BackendUnavailable


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str  # "NVIDIA GeForce RTX 4090"
    sm: str  # compute capability "8.9"
    total_bytes: int
    free_bytes: int
    driver_version: str  # "12.8"
    runtime_version: str  # "12.8"

    @property
    def target_name(self) -> str:
        """The engines/ folder name for this GPU type: sm<major><minor>-<model>, e.g. "sm89-rtx4090"."""
        return f"sm{self.sm.replace('.', '')}-{gpu_slug(self.name)}"


def gpu_slug(name: str) -> str:
    """"NVIDIA GeForce RTX 4090" -> "rtx4090"; "NVIDIA H200" -> "h200"; "NVIDIA A10G" -> "a10g"."""
    text = name.lower()
    for word in ("nvidia", "geforce", "tesla", "quadro"):
        text = text.replace(word, " ")
    text = re.sub(r"[^a-z0-9]+", "", text)
    return text or "gpu"


def _version(v: int) -> str:
    """CUDA encodes versions as 1000 * major + 10 * minor (12080 -> "12.8")."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def cuda_runtime():
    """The `cuda.bindings.runtime` module (cuda-python 12.6+/13.x), or None if not installed."""
    try:
        from cuda.bindings import runtime  # noqa: PLC0415 - optional, GPU machines only
    except ImportError:
        return None
    return runtime


def _ok(result, rt) -> bool:
    return result[0] == rt.cudaError_t.cudaSuccess


@lru_cache(maxsize=1)
def probe_gpus() -> tuple[GpuInfo, ...]:
    """Every CUDA device with its name, SM, memory and versions; () when there is none."""
    rt = cuda_runtime()
    if rt is None:
        return ()
    count = rt.cudaGetDeviceCount()
    if not _ok(count, rt) or not count[1]:
        return ()
    driver = rt.cudaDriverGetVersion()
    runtime = rt.cudaRuntimeGetVersion()
    gpus = []
    for i in range(count[1]):
        props = rt.cudaGetDeviceProperties(i)
        if not _ok(props, rt):
            continue
        p = props[1]
        name = p.name.decode(errors="replace").rstrip("\x00") if isinstance(p.name, bytes) else str(p.name)
        free, total = _mem_info(rt, i) or (0, int(p.totalGlobalMem))
        gpus.append(GpuInfo(
            index=i,
            name=name,
            sm=f"{p.major}.{p.minor}",
            total_bytes=total,
            free_bytes=free,
            driver_version=_version(driver[1]) if _ok(driver, rt) else "",
            runtime_version=_version(runtime[1]) if _ok(runtime, rt) else "",
        ))
    return tuple(gpus)


def require_gpu(index: int = 0, what: str = "this target") -> GpuInfo:
    gpus = probe_gpus()
    if not gpus:
        hint = "" if cuda_runtime() is not None else " (cuda-python is not installed: pip install 'streetcascade[gpu]')"
        raise BackendUnavailable(f"{what} needs an NVIDIA GPU, and the CUDA runtime finds none here{hint}")
    if index >= len(gpus):
        raise BackendUnavailable(f"{what}: GPU {index} asked for, this machine has {len(gpus)}")
    return gpus[index]


def _mem_info(rt, index: int) -> tuple[int, int] | None:
    """(free, total) bytes of GPU `index` now (cudaMemGetInfo), None if the runtime cannot say."""
    if not _ok(rt.cudaSetDevice(index), rt):
        return None
    mem = rt.cudaMemGetInfo()
    return (int(mem[1]), int(mem[2])) if _ok(mem, rt) else None


def free_bytes(index: int = 0) -> int:
    """Free device memory on GPU `index` now, 0 if unknown."""
    rt = cuda_runtime()
    info = _mem_info(rt, index) if rt is not None else None
    return info[0] if info else 0


def check_sm(manifest, engine_dir) -> None:
    """GPU engines run only on the SM they were built for: EngineMismatch naming both."""
    from streetcascade.errors import EngineMismatch

    target = manifest.target
    gpus = probe_gpus()
    if not gpus:
        raise BackendUnavailable(f"{engine_dir}: built for a GPU ({target.gpu_name or 'SM ' + str(target.sm)}); this machine has none")
    here = gpus[0]
    if target.sm and target.sm != here.sm:
        raise EngineMismatch(
            f"{engine_dir}: built for SM {target.sm} ({target.gpu_name or 'unknown GPU'}), this GPU is "
            f"SM {here.sm} ({here.name}); compile an engine set for it (`streetcascade compile-engines`)"
        )
