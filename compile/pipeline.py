"""compile: cascade config -> engines/<target>/ (graphs + manifest.json).

Per stage: the family declares its graphs and loads them; each graph is exported to ONNX,
built by the target (compile/targets/), loaded back through the runtime's backend to measure
its memory (`Engine.memory`, on the fresh engine) and to check it against the family's
PyTorch reference (the parity gate). Nothing here knows a backend or a family by name.

Built into a temporary folder next to the destination and swapped in only when every stage
has passed its gates: a failed compile never destroys the engine set already there.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from streetcascade.config import CascadeConfig, StageConfig, TargetConfig, load_config, resolve_relative
from streetcascade.errors import CompileError, ConfigError, StreetcascadeError
from streetcascade.evidence import LogOddsRule, Vocabulary
from streetcascade.machine import version_of
from streetcascade.manifest import (FORMAT_VERSION, CompanionFile, GraphEntry, LatencyRatio, Manifest, StageEntry, TargetInfo, TargetSelection,
                                    sha256_file, write_manifest)
from streetcascade.progress import Progress
from streetcascade.runtime.backends import get_backend

from . import parity as parity_gate
from .export import export_graph
from .models import get_family
from .models.base import ExportableGraph, ExportableModel
from .targets import AUTO, CPU_TARGETS, BuildJob, Target, engine_set_name, get_target

log = logging.getLogger(__name__)

# Recorded in the manifest, with the target backend's own package (whose major.minor the
# loader compares, `Backend.package`).
LIBRARIES = ("onnxruntime", "torch", "transformers", "onnx", "numpy")
# Intermediate files a build leaves in its work folder (kept with --keep-raw).
INTERMEDIATES = ("*.raw.onnx", "*.raw.onnx.data", "*.int8.onnx", "*.int8.onnx.data", "*.qdq.onnx", "*.kept.onnx", "*.fp32-ref.*", "*.tmp.onnx", "*.tmp.onnx.data", "*.ort-int8.onnx")


def at_precision(stage: StageConfig, precision: str) -> StageConfig:
    """The stage as built at another precision (one of its graphs); its int4 table only at int4."""
    return msgspec.structs.replace(stage, precision=precision, int4=stage.int4 if precision == "int4" else None)


@dataclass
class _Stage:
    """The context one stage's graphs are built in."""

    stage: StageConfig
    config_path: Path
    config: CascadeConfig
    target: Target
    info: TargetInfo
    workdir: Path
    progress: Progress
    # Off for the candidates `backend = "auto"` compares: only the kept one is timed against its
    # reference (`with_latency`), once the choice is made.
    time_latency: bool = True
    model: ExportableModel | None = None  # after build()
    awq_matched: set[str] = field(default_factory=set)  # precision int4 from AutoAWQ: the layers some graph holds
    notes: list[str] = field(default_factory=list)  # what the target said about its builds (BuiltGraph.notes)

    def build_graph(self, graph: ExportableGraph) -> GraphEntry:
        decl, progress = graph.decl, self.progress
        # A graph may be built at its own precision (a VLM's vision tower stays FP32).
        stage = at_precision(self.stage, decl.precision) if decl.precision else self.stage
        raw = self.workdir / f"{stage.name}.{decl.role}.raw.onnx"
        shapes = ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in decl.io.inputs)
        if self.target.needs_onnx and not raw.exists():  # another candidate target (auto) exported it already
            fused = stage.attention == "fused" and decl.attention_fusable
            progress.step(f"{stage.name}: exporting the {decl.role} graph to ONNX (opset {decl.opset}; {shapes})"
                          + ("; attention as ONNX Runtime's MultiHeadAttention" if fused else ""))
            export_graph(graph, raw, fused_attention=fused)
        out = self.workdir / f"{stage.name}.{decl.role}.{stage.precision}{self.target.suffix}"
        built = self.target.build(BuildJob(stage, self.config, self.config_path, decl.io, raw, out, progress, graph))
        self.awq_matched.update(built.awq_matched)
        self.notes.extend(n for n in built.notes if n not in self.notes)
        tolerance = stage.parity_tolerance or parity_gate.DEFAULT_TOLERANCE.get(stage.precision, 1e-2)
        backend = get_backend(self.target.backend)
        with _closing(backend), backend.load(str(built.path), decl.io, backend.options_for_target(self.config.runtime, self.info)) as engine:
            memory = engine.memory()  # first: it measures a fresh engine's peak at max_batch
            parity_ort = None
            if decl.parity in ("tensor", "relative", "judge"):  # not a classifier (OCR, VLM): outputs vs the family's reference
                what = {"tensor": "every output", "relative": "every output relative to its scale", "judge": "p(yes)"}[decl.parity]
                progress.step(f"{stage.name}: {decl.role}: weights {memory.weights_bytes / 2**20:.0f} MiB, activations {memory.activations_bytes / 2**20:.0f} MiB; "
                              f"parity ({what}) on {len(graph.parity_feeds or [])} example inputs (tolerance {tolerance:g})")
                check = {"tensor": parity_gate.check_tensor_parity, "relative": parity_gate.check_relative_parity,
                         "judge": parity_gate.check_judge_parity}[decl.parity]
                parity = check(engine, graph.reference, graph.parity_feeds or [], tolerance, f"{stage.name}/{decl.role}")
            else:
                folder = resolve_relative(self.config_path, self.config.parity_images) if self.config.parity_images else None
                images, n_real = parity_gate.parity_images(stage.input_size, folder, seed=stage.seed)
                progress.step(
                    f"{stage.name}: memory at batch {decl.io.max_batch}: weights {memory.weights_bytes / 2**20:.0f} MiB, "
                    f"activations {memory.activations_bytes / 2**20:.0f} MiB; parity vs PyTorch on {n_real} sample + "
                    f"{len(images) - n_real} synthetic images (tolerance {tolerance:g})"
                )
                parity = parity_gate.check_classifier_parity(engine, graph.reference, images, tolerance, f"{stage.name}/{decl.role}")
                if self.info.device == "cuda" and raw.exists():
                    parity_ort = self.parity_vs_onnxruntime(engine, raw, decl, images, tolerance)
        return GraphEntry(
            role=decl.role,
            file=built.path.name,
            sha256=sha256_file(built.path),
            size_bytes=built.path.stat().st_size,
            precision=stage.precision,
            io=decl.io,
            parity=parity,
            memory=memory,
            accuracy_gate=built.accuracy_gate,
            build=built.build,
            parity_onnxruntime=parity_ort,
            companions=[CompanionFile(file=p.name, sha256=sha256_file(p), size_bytes=p.stat().st_size) for p in built.companions],
            weight_quant=built.weight_quant,
        )

    def with_latency(self, entry: StageEntry) -> StageEntry:
        """Each graph's batch-1 latency vs PyTorch eager (or the source ONNX graph), timed side by
        side on one thread each: the ratio the latency-regression suite holds later runs to."""
        if not self.config.target.latency_runs or self.model is None:
            return entry
        by_role = {g.decl.role: g for g in self.model.graphs}
        graphs = [msgspec.structs.replace(g, latency=self.time_against_reference(self.workdir / g.file, by_role[g.role]))
                  if g.role in by_role else g for g in entry.graphs]
        return msgspec.structs.replace(entry, graphs=graphs)

    def time_against_reference(self, path: Path, graph: ExportableGraph) -> LatencyRatio | None:
        from .latency import TooSlowToTime, measure_graph, timing_engine

        images = None
        if graph.decl.parity == "classifier":
            folder = resolve_relative(self.config_path, self.config.parity_images) if self.config.parity_images else None
            images = parity_gate.parity_images(self.stage.input_size, folder, seed=self.stage.seed)[0]
        try:
            with timing_engine(path, graph.decl.io, self.info) as engine:
                result = measure_graph(engine, graph, images, self.info.device, self.config.target.latency_runs)
        except TooSlowToTime as exc:
            self.progress.step(f"{self.stage.name}: {graph.decl.role}: latency vs the reference not recorded: {exc}")
            return None
        except Exception as exc:  # timing is a record for the regression suite, not a gate: never fail the build on it
            log.warning("%s/%s: latency vs the reference not recorded: %s: %s", self.stage.name, graph.decl.role, type(exc).__name__, exc)
            self.progress.step(f"{self.stage.name}: {graph.decl.role}: latency vs the reference not recorded ({type(exc).__name__}: {exc})")
            return None
        self.progress.step(f"{self.stage.name}: {graph.decl.role}: batch-1 latency {result.engine_p50_ms:.2f} ms vs {result.reference} "
                           f"{result.reference_p50_ms:.2f} ms (p50 ratio {result.ratio_p50:.2f}, {result.runs} runs each, side by side)")
        return result

    def parity_vs_onnxruntime(self, engine, raw: Path, decl, images, tolerance: float):
        """A GPU engine against the FP32 ONNX Runtime engine of the graph it was built from."""
        ort_backend = get_backend("onnxruntime")
        options = msgspec.structs.replace(ort_backend.options_for(self.config.runtime, "cpu"), optimize=True)
        self.progress.step(f"{self.stage.name}: parity vs the FP32 ONNX Runtime engine on the CPU")
        with ort_backend.load(str(raw), decl.io, options) as reference, reference.slot() as slot:
            return parity_gate.check_classifier_parity(engine, slot.logits, images, tolerance, f"{self.stage.name}/{decl.role}",
                                                       reference_name="onnxruntime-fp32")

    def build(self) -> StageEntry:
        stage, family = self.stage, get_family(self.stage.family)
        self.target.check_precision(stage, self.config.target.device)
        self.progress.step(f"{stage.name}: loading {stage.family} from {stage.source}")
        model = family.load(stage, self.config_path)
        declared = [d.role for d in family.graphs(stage)]
        if [g.decl.role for g in model.graphs] != declared:
            raise CompileError(f"family {stage.family}: loaded graphs {[g.decl.role for g in model.graphs]} differ from the declared {declared}")
        for graph in model.graphs:
            if graph.decl.parity not in ("classifier", "tensor", "relative", "judge"):
                raise CompileError(f"family {stage.family}: no parity check for {graph.decl.parity!r} graphs")
            if graph.decl.precision and graph.decl.precision != stage.precision:
                self.target.check_precision(at_precision(stage, graph.decl.precision), self.config.target.device)
        self.model = model
        graphs = [self.build_graph(graph) for graph in model.graphs]
        from .int4 import check_awq_stage

        int4_notes = check_awq_stage(stage, self.config_path, self.awq_matched)
        evidence_stage = family.kind in ("ocr", "vlm")  # moves the earlier stage's probability (streetcascade/evidence.py)
        entry = StageEntry(
            name=stage.name,
            kind=family.kind,
            family=stage.family,
            source=stage.source,
            source_sha256=model.source_sha256,
            placeholder_weights=model.placeholder,
            input_size=stage.input_size,
            thresholds=stage.thresholds,
            graphs=graphs,
            notes=model.notes + int4_notes + self.notes + [f"{g.decl.role} input: {g.decl.preprocessing}" for g in model.graphs if g.decl.preprocessing]
            + ([f"attention fused: every scaled_dot_product_attention of the {', '.join(g.decl.role for g in model.graphs if g.decl.attention_fusable)} "
                "graph is ONNX Runtime's MultiHeadAttention"] if stage.attention == "fused" else []),
            evidence=(stage.evidence or Vocabulary()) if family.kind == "ocr" else None,
            combine=(stage.combine or LogOddsRule()) if evidence_stage else None,
        )
        if model.finish is not None:
            entry = self.finish(model, entry)
        return self.with_latency(entry) if self.time_latency else entry

    def finish(self, model, entry: StageEntry) -> StageEntry:
        """The family's checks of the whole stage, over its built engines."""
        from .models.base import BuiltStage

        backend = get_backend(self.target.backend)
        options = backend.options_for_target(self.config.runtime, self.info)
        io = {g.role: (g.file, g.io) for g in entry.graphs}

        def load(role: str):
            file, graph_io = io[role]
            return backend.load(str(self.workdir / file), graph_io, options)

        with _closing(backend):
            return model.finish(BuiltStage(entry, self.workdir, self.config, self.config_path, load, self.progress))


def compile_cascade(config_path: str | Path, out_dir: str | Path | None = None, progress: bool = True, keep_raw: bool = False,
                    target: TargetConfig | None = None) -> Path:
    """`target` replaces the config's [target] (compile-engines picks the GPU target)."""
    t0 = time.perf_counter()
    config_path = Path(config_path)
    config = load_config(config_path)
    if target is not None:
        config = msgspec.structs.replace(config, target=target)
    reporter = Progress(progress)
    auto = config.target.backend == AUTO
    infos, skipped = auto_candidates(config) if auto else ({config.target.backend: get_target(config.target.backend).describe(config)}, {})
    candidates = list(infos)
    name = engine_set_name(config) if auto else infos[candidates[0]].name
    dest = Path(out_dir) if out_dir else resolve_relative(config_path, config.engines_dir) / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    reporter.step(f"compiling {len(config.stages)} stage(s) for {name} into {dest}"
                  + (f" (target auto: {', '.join(candidates)}{'; not ' + ', '.join(skipped) if skipped else ''})" if auto else ""))
    workdir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    try:
        done: dict[int, StageEntry] = {}
        if len(candidates) > 1:
            target, info, timed, done[timed] = _choose_target(infos, skipped, name, config_path, config, workdir, reporter)
        else:
            target, info = get_target(candidates[0]), infos[candidates[0]]
            if auto:
                info = msgspec.structs.replace(info, name=name, selection=TargetSelection(stage="", batch=1, runs=0, median_ms={}, skipped=skipped))
        stages = [done.get(i) or _Stage(stage, config_path, config, target, info, workdir, reporter).build() for i, stage in enumerate(config.stages)]
        if not keep_raw:
            for pattern in INTERMEDIATES:
                for p in workdir.glob(pattern):
                    p.unlink()
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            target=info,
            stages=stages,
            library_versions={lib: v for lib in dict.fromkeys([*LIBRARIES, get_backend(target.backend).package]) if lib and (v := version_of(lib))},
            built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            build_seconds=round(time.perf_counter() - t0, 2),
            config_sha256=sha256_file(config_path),
        )
        write_manifest(workdir, manifest)
        _swap_in(workdir, dest)
    except BaseException as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        gate = getattr(exc, "gate", None)
        if gate is not None:  # AccuracyGateFailed: keep the figures (and the layers that hurt) for the operator
            from streetcascade.structs import write_json

            report = dest.parent / f"{dest.name}.gate-failed.json"
            write_json(report, gate)
            exc.args = (f"{exc.args[0]} Figures: {report}",)
        raise
    reporter.step(f"done in {time.perf_counter() - t0:.1f} s: {dest}")
    for stage in stages:
        if stage.placeholder_weights:
            reporter.step(f"NOTE {stage.name} uses PLACEHOLDER (random) weights: not a roadwork detector; point `source`/`head` at real checkpoints")
    return dest


AUTO_TIMED_RUNS = 60


def auto_candidates(config: CascadeConfig) -> tuple[dict[str, TargetInfo], dict[str, str]]:
    """The CPU targets that can build every stage at its precision here (each with this machine
    described as that target), and why the others cannot (not installed, precision not
    offered, no bf16 in this CPU)."""
    if config.target.device != "cpu":
        raise ConfigError("[target] backend = \"auto\" chooses between CPU targets; for a GPU use `streetcascade compile-engines --target auto`")
    ok, skipped = {}, {}
    for name in CPU_TARGETS:
        target = get_target(name)
        try:
            info = target.describe(msgspec.structs.replace(config, target=msgspec.structs.replace(config.target, backend=name)))
            for stage in config.stages:
                target.check_precision(stage, "cpu")
        except StreetcascadeError as exc:
            skipped[name] = str(exc)
            continue
        ok[name] = info
    if not ok:
        raise CompileError("no CPU target can build this cascade here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return ok, skipped


def _choose_target(infos: dict[str, TargetInfo], skipped, name, config_path, config, workdir, progress):
    """Build the first classifier stage with every candidate, time the engines at batch 1 side
    by side (interleaved rounds in one process: on a small shared box the noise moves from
    minute to minute, so only a same-run comparison means anything), keep the fastest; the
    losers' files are removed."""
    index = next((i for i, s in enumerate(config.stages) if get_family(s.family).kind == "classifier"), 0)
    stage = config.stages[index]
    built: dict[str, tuple[Target, TargetInfo, StageEntry, _Stage]] = {}
    failed: dict[str, CompileError] = {}
    for backend_name, described in infos.items():
        target = get_target(backend_name)
        info = msgspec.structs.replace(described, name=name)
        progress.step(f"target auto: building {stage.name} with {backend_name}")
        before = set(workdir.iterdir())
        try:
            # Only the kept candidate is timed against its reference (with_latency), after the choice.
            candidate = _Stage(stage, config_path, config, target, info, workdir, progress, time_latency=False)
            built[backend_name] = (target, info, candidate.build(), candidate)
        except CompileError as exc:
            # One candidate refusing the stage (a parity or accuracy gate, a graph its library
            # misreads) leaves the others: auto keeps what builds, and the manifest says why not.
            failed[backend_name] = exc
            progress.step(f"target auto: {backend_name} could not build {stage.name}: {exc}")
            for path in set(workdir.iterdir()) - before:
                if not any(path.match(pattern) for pattern in INTERMEDIATES):  # the shared export stays for the next candidate
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
    if not built:
        raise next(iter(failed.values()))
    skipped = {**skipped, **{k: f"could not build {stage.name}: {v}" for k, v in failed.items()}}
    if len(built) > 1:
        progress.step(f"target auto: timing {stage.name} at batch 1 with {', '.join(built)} side by side ({AUTO_TIMED_RUNS} runs each)")
        median = _time_candidates(built, workdir, config)
        winner = min(median, key=median.get)
        progress.step("target auto: " + ", ".join(f"{k} {v:.2f} ms" for k, v in median.items()) + f" -> {winner}")
    else:
        median, winner = {}, next(iter(built))
        progress.step(f"target auto: only {winner} built {stage.name} -> {winner}")
    for backend_name, (_, _, entry, _) in built.items():
        if backend_name != winner:
            for graph in entry.graphs:
                for file in [graph.file, *(c.file for c in graph.companions)]:
                    (workdir / file).unlink(missing_ok=True)
    target, info, entry, kept = built[winner]
    entry = kept.with_latency(entry)
    selection = TargetSelection(stage=stage.name, batch=1, runs=AUTO_TIMED_RUNS if median else 0, median_ms={k: round(v, 3) for k, v in median.items()}, skipped=skipped)
    return target, msgspec.structs.replace(info, selection=selection), index, entry


def _time_candidates(built, workdir: Path, config: CascadeConfig) -> dict[str, float]:
    import numpy as np

    from streetcascade.runtime.backends.base import concrete_shape
    from streetcascade.timing import interleaved

    calls, opened = {}, []
    try:
        for backend_name, (target, info, entry, _) in built.items():
            graph = entry.graphs[0]
            backend = get_backend(target.backend)
            engine = backend.load(str(workdir / graph.file), graph.io, backend.options_for_target(config.runtime, info))
            slot = engine.slot()
            opened += [slot, engine, backend]
            rng = np.random.default_rng(0)
            feeds = {s.name: rng.integers(0, 256, concrete_shape(s, 1, graph.io.axis_sizes)).astype(s.dtype) for s in graph.io.inputs}
            calls[backend_name] = lambda slot=slot, feeds=feeds: slot.infer(feeds)
        samples = interleaved(calls, runs=AUTO_TIMED_RUNS, warmup=3, rounds=3)
    finally:
        for thing in opened:
            thing.close()
    return {k: float(np.median(v)) for k, v in samples.items()}


@contextmanager
def _closing(backend):
    """Close what the backend shares between engines (a GPU arena) after the engine."""
    try:
        yield backend
    finally:
        backend.close()


def _swap_in(workdir: Path, dest: Path) -> None:
    """Replace `dest` with `workdir` (old set moved aside first, removed only after the swap)."""
    old = None
    if dest.exists():
        if not (dest / "manifest.json").exists() and any(dest.iterdir()):
            raise CompileError(f"{dest} exists, is not empty and is not an engine set; refusing to replace it")
        old = dest.with_name(f".{dest.name}.old-{int(time.time())}")
        dest.rename(old)
    workdir.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
