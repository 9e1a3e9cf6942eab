"""Load an engine set (engines/<target>/) into a ready Cascade, inside a memory budget.

Order matters: read + check the manifest (target, versions, hashes) and the budget from
compile-time measurements *before* loading anything; then load, warm up, and measure again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from streetcascade.errors import BudgetExceeded, EngineMismatch, StreetcascadeError
from streetcascade.machine import arch, cpu_features, rss_bytes, version_of
from streetcascade.manifest import Manifest, read_manifest, verify_files

from .backends import get_backend
from .cascade import Cascade, ClassifierStage

log = logging.getLogger(__name__)

# The Python package whose version must match per backend (major.minor).
BACKEND_PACKAGES = {"onnxruntime": "onnxruntime"}


def check_target(manifest: Manifest, engine_dir: str | Path) -> None:
    target = manifest.target
    if target.arch != arch():
        raise EngineMismatch(f"{engine_dir}: built for {target.arch}, this machine is {arch()}")
    if target.device == "cpu":
        missing = sorted(set(target.cpu_features) - set(cpu_features()))
        if missing:
            raise EngineMismatch(
                f"{engine_dir}: built on a CPU with {', '.join(missing)}, which this CPU lacks; "
                "recompile on this machine (`streetcascade compile`)"
            )
    package = BACKEND_PACKAGES.get(target.backend)
    if package:
        built = manifest.library_versions.get(package)
        here = version_of(package)
        if built and here and built.split(".")[:2] != here.split(".")[:2]:
            raise EngineMismatch(f"{engine_dir}: built with {package} {built}, this machine has {here}; recompile")


class EngineSet:
    """Loaded engines + the cascade over them. Close it (or use `with`) to free them."""

    def __init__(self, engine_dir: Path, manifest: Manifest, engines: list, cascade: Cascade, memory_bytes: int, load_seconds: float):
        self.engine_dir = engine_dir
        self.manifest = manifest
        self.engines = engines
        self.cascade = cascade
        self.memory_bytes = memory_bytes
        self.load_seconds = load_seconds

    @property
    def placeholder_stages(self) -> list[str]:
        return [s.name for s in self.manifest.stages if s.placeholder_weights]

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        self.engines = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_engine_set(
    engine_dir: str | Path,
    budget_bytes: int = 24 * 1024**3,
    overrides: dict[str, tuple[float, float, float]] | None = None,
    backend_options: dict | None = None,
    safety_margin_ms: float = 0.0,
    warmup: bool = True,
) -> EngineSet:
    """Load every stage of the engine set in `engine_dir`.

    `overrides` replaces a stage's (exit_low, exit_high, temperature) from the manifest, e.g.
    with the values `streetcascade tune` wrote into the cascade config.
    """
    t0 = time.perf_counter()
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    check_target(manifest, engine_dir)
    verify_files(engine_dir, manifest)
    unknown = sorted(set(overrides or {}) - {s.name for s in manifest.stages})
    if unknown:
        raise EngineMismatch(f"{engine_dir}: the config names stage(s) {', '.join(unknown)} that this engine set lacks; recompile")
    planned = sum(g.memory_bytes for s in manifest.stages for g in s.graphs)
    if planned > budget_bytes:
        raise BudgetExceeded(
            f"{engine_dir}: the engine set needs {planned / 2**20:.0f} MiB (measured at compile time), "
            f"over the budget of {budget_bytes / 2**20:.0f} MiB"
        )
    backend = get_backend(manifest.target.backend)
    rss_before = rss_bytes()
    engines, stages = [], []
    try:
        for stage in manifest.stages:
            if len(stage.graphs) != 1 or stage.graphs[0].role != "classifier":
                raise EngineMismatch(f"{engine_dir}: stage {stage.name} has graphs this runtime cannot run yet")
            graph = stage.graphs[0]
            options = dict(backend_options or {})
            options.setdefault("device", manifest.target.device)
            engine = backend.load(str(engine_dir / graph.file), graph.inputs, graph.outputs, options)
            engines.append(engine)
            low, high, temperature = (overrides or {}).get(stage.name, (stage.exit_low, stage.exit_high, stage.temperature))
            stages.append(ClassifierStage(stage.name, engine, stage.input_size, low, high, temperature, max_batch=graph.max_batch))
            if stage.placeholder_weights:
                log.warning("stage %s runs PLACEHOLDER (random) weights: its answers are not a detector", stage.name)
        if warmup:
            blank = np.zeros((stages[0].input_size, stages[0].input_size, 3), dtype=np.uint8)
            for s in stages:
                s.score([blank])
        used = max(0, rss_bytes() - rss_before)
        if used > budget_bytes:
            raise BudgetExceeded(f"{engine_dir}: loading used {used / 2**20:.0f} MiB, over the budget of {budget_bytes / 2**20:.0f} MiB")
    except BaseException:
        for engine in engines:
            engine.close()
        raise
    cascade = Cascade(stages, safety_margin_ms=safety_margin_ms)
    seconds = time.perf_counter() - t0
    log.info("loaded %s: %d stage(s), %.0f MiB, %.2f s", engine_dir, len(stages), used / 2**20, seconds)
    return EngineSet(engine_dir, manifest, engines, cascade, used, seconds)


__all__ = ["EngineSet", "load_engine_set", "check_target", "StreetcascadeError"]
