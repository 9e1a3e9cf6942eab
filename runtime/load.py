"""Load an engine set (engines/<target>/) into a ready Cascade, inside a memory budget.

Order matters: read + check the manifest (target, versions, hashes) and plan the memory from
the figures measured at compile time *before* loading anything; then load and warm up.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import msgspec

from streetcascade.errors import EngineMismatch
from streetcascade.evidence import LogOddsRule
from streetcascade.manifest import Manifest, read_manifest, verify_files
from streetcascade.settings import RuntimeConfig, StageThresholds

from .backends import get_backend
from .backends.base import Backend, Closeable, Engine, example_feeds
from .cascade import Cascade
from .plan import MemoryPlan, check_budget, limit_to_free_device_memory, plan_memory
from .stages import build_stage

log = logging.getLogger(__name__)


class EngineSet(Closeable):
    """Loaded engines + the cascade over them. Close it (or use `with`) to free them."""

    def __init__(self, engine_dir: Path, manifest: Manifest, engines: list[Engine], cascade: Cascade, plan: MemoryPlan, load_seconds: float,
                 backend: Backend | None = None):
        self.engine_dir = engine_dir
        self.backend = backend
        self.manifest = manifest
        self.engines = engines
        self.cascade = cascade
        self.plan = plan
        self.load_seconds = load_seconds

    @property
    def placeholder_stages(self) -> list[str]:
        return [s.name for s in self.manifest.stages if s.placeholder_weights]

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        self.engines = []
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def load_engine_set(
    engine_dir: str | Path,
    runtime: RuntimeConfig = RuntimeConfig(),
    thresholds: dict[str, StageThresholds] | None = None,
    warmup: bool = True,
    rules: dict[str, LogOddsRule] | None = None,
    only_stages: Sequence[str] | None = None,
) -> EngineSet:
    """Load every stage of the engine set in `engine_dir` (or only the stages named in `only_stages`).

    `thresholds` replaces a stage's thresholds from the manifest, e.g. with the values
    `streetcascade tune` wrote into the cascade config; `rules` does the same for evidence
    stages' combination rules. `only_stages` loads a part of the set: its files are checked and its
    memory planned against `runtime.budget_bytes` alone (a Ray Serve replica of one stage:
    runtime/ray_app.py).
    """
    t0 = time.perf_counter()
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    unknown = sorted(set(thresholds or {}) - {s.name for s in manifest.stages})
    if unknown:
        raise EngineMismatch(f"{engine_dir}: the config names stage(s) {', '.join(unknown)} that this engine set lacks; recompile")
    if only_stages is not None:
        missing = sorted(set(only_stages) - {s.name for s in manifest.stages})
        if missing or not only_stages:
            raise EngineMismatch(f"{engine_dir}: no stage(s) {', '.join(missing) or '(none named)'} in this engine set; it has "
                                 f"{', '.join(s.name for s in manifest.stages)}")
        # A part of the set: only its files are hashed, only its memory is planned.
        manifest = msgspec.structs.replace(manifest, stages=[s for s in manifest.stages if s.name in set(only_stages)])
    backend = get_backend(manifest.target.backend)
    backend.check_target(manifest, engine_dir)
    verify_files(engine_dir, manifest)
    plan = plan_memory(manifest, runtime)
    if manifest.target.device == "cuda":
        from streetcascade.gpu import free_bytes

        plan = limit_to_free_device_memory(plan, free_bytes())
    check_budget(plan, str(engine_dir))
    options = backend.options_for_target(runtime, manifest.target)
    engines: list[Engine] = []
    stages = []
    try:
        for entry in manifest.stages:
            by_role = {}
            for graph in entry.graphs:
                engine = backend.load(str(engine_dir / graph.file), graph.io, options)
                engines.append(engine)
                by_role[graph.role] = engine
            if rules and entry.name in rules:  # the config's (tuned) rule in place of the compile-time one
                entry = msgspec.structs.replace(entry, combine=rules[entry.name])
            stages.append(build_stage(entry, by_role, (thresholds or {}).get(entry.name, entry.thresholds)))
            if entry.placeholder_weights:
                log.warning("stage %s runs PLACEHOLDER (random) weights: its answers are not a detector", entry.name)
        if warmup:  # first runs allocate (arena, kernels): pay for them here, not in a request
            for engine in engines:
                with engine.slot() as slot:
                    for batch in engine.warmup_batches():
                        slot.infer(example_feeds(engine.io, batch))
    except BaseException:
        for engine in engines:
            engine.close()
        backend.close()
        raise
    if runtime.batch_window_ms > 0 and stages:
        from .batching import BatchingStage

        first = manifest.stages[0].graphs[0].io.max_batch
        stages[0] = BatchingStage(stages[0], runtime.batch_window_ms, first, runtime.slots)
    cascade = Cascade(stages, safety_margin_ms=runtime.safety_margin_ms)
    seconds = time.perf_counter() - t0
    log.info("loaded %s: %d stage(s), %.2f s; memory plan %s", engine_dir, len(stages), seconds, plan.describe())
    return EngineSet(engine_dir, manifest, engines, cascade, plan, seconds, backend)


__all__ = ["EngineSet", "load_engine_set"]
