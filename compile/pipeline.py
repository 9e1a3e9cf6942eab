"""compile: cascade config -> engines/<target>/ (graphs + manifest.json).

Built into a temporary folder next to the destination and swapped in only when every stage
has passed its parity gate: a failed compile never destroys the engine set already there.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import time
from pathlib import Path

from streetcascade.config import CascadeConfig, StageConfig, load_config, resolve_relative
from streetcascade.errors import CompileError, ConfigError
from streetcascade.machine import arch, cpu_features, default_target_name, rss_bytes, version_of
from streetcascade.manifest import FORMAT_VERSION, GraphEntry, Manifest, StageEntry, TargetInfo, sha256_file, write_manifest
from streetcascade.runtime.backends import get_backend

from . import parity as parity_gate
from .export import classifier_specs, export_classifier
from .models import get_family
from .targets import onnxruntime as ort_target

log = logging.getLogger(__name__)

LIBRARIES = ("onnxruntime", "torch", "transformers", "onnx", "numpy")


def target_info(config: CascadeConfig) -> TargetInfo:
    t = config.target
    if t.backend != ort_target.BACKEND:
        raise ConfigError(f"target.backend {t.backend!r} cannot be compiled here yet (have: {ort_target.BACKEND})")
    if t.device != "cpu":
        raise ConfigError(f"target.device {t.device!r}: the onnxruntime target builds for cpu here")
    return TargetInfo(name=t.name or default_target_name(t.device), backend=t.backend, device=t.device, arch=arch(), cpu_features=list(cpu_features()))


def engine_dir_for(config_path: Path, config: CascadeConfig) -> Path:
    return resolve_relative(config_path, config.engines_dir) / target_info(config).name


class Progress:
    """Step reporting: a rich status line when rich is there and stderr is a terminal."""

    def __init__(self, enabled: bool):
        self._console = None
        if enabled:
            try:
                from rich.console import Console

                self._console = Console(stderr=True)
            except ImportError:
                pass

    def step(self, message: str) -> None:
        log.info(message)
        if self._console is not None:
            self._console.print(f"[bold cyan]>[/] {message}")


def compile_stage(stage: StageConfig, config_path: Path, config: CascadeConfig, workdir: Path, progress: Progress) -> StageEntry:
    family = get_family(stage.family)
    progress.step(f"{stage.name}: loading {stage.family} from {stage.source}")
    model = family.load(stage, config_path)
    raw = workdir / f"{stage.name}.raw.onnx"
    progress.step(f"{stage.name}: exporting to ONNX (opset 17, uint8 NHWC {stage.input_size}x{stage.input_size} input)")
    export_classifier(model.module, raw, stage.input_size)
    engine_file = f"{stage.name}.{stage.precision}.onnx"
    inputs, outputs = classifier_specs(stage.input_size)
    accuracy_gate = None
    if stage.precision == "int8-static":
        from .static_int8 import build_gated_static

        accuracy_gate = build_gated_static(stage, config_path, config, raw, workdir / engine_file, inputs, outputs, progress.step)
    else:
        progress.step(f"{stage.name}: building {stage.precision} graph for onnxruntime (offline optimisation)")
        ort_target.build(raw, workdir / engine_file, stage.precision, config.target.intra_op_threads)
    tolerance = stage.parity_tolerance if stage.parity_tolerance > 0 else parity_gate.DEFAULT_TOLERANCE[stage.precision]
    folder = resolve_relative(config_path, config.parity_images) if config.parity_images else None
    images, n_real = parity_gate.parity_images(stage.input_size, folder, seed=stage.seed)
    progress.step(f"{stage.name}: parity vs PyTorch on {n_real} sample + {len(images) - n_real} synthetic images (tolerance {tolerance:g})")
    rss_before = rss_bytes()
    engine = get_backend(ort_target.BACKEND).load(str(workdir / engine_file), inputs, outputs, {"intra_op_threads": config.target.intra_op_threads})
    try:
        parity = parity_gate.check_parity(engine, model.reference, images, tolerance, stage.max_batch, stage.name)
        memory = max(0, rss_bytes() - rss_before)
    finally:
        engine.close()
    graph = GraphEntry(
        role="classifier",
        file=engine_file,
        sha256=sha256_file(workdir / engine_file),
        size_bytes=(workdir / engine_file).stat().st_size,
        precision=stage.precision,
        inputs=inputs,
        outputs=outputs,
        parity=parity,
        memory_bytes=max(memory, (workdir / engine_file).stat().st_size),
        max_batch=stage.max_batch,
        accuracy_gate=accuracy_gate,
    )
    return StageEntry(
        name=stage.name,
        family=stage.family,
        source=stage.source,
        source_sha256=model.source_sha256,
        placeholder_weights=model.placeholder,
        input_size=stage.input_size,
        exit_low=stage.exit_low,
        exit_high=stage.exit_high,
        temperature=stage.temperature,
        graphs=[graph],
        notes=model.notes,
    )


def compile_cascade(config_path: str | Path, out_dir: str | Path | None = None, progress: bool = True, keep_raw: bool = False) -> Path:
    t0 = time.perf_counter()
    config_path = Path(config_path)
    config = load_config(config_path)
    target = target_info(config)
    dest = Path(out_dir) if out_dir else engine_dir_for(config_path, config)
    dest.parent.mkdir(parents=True, exist_ok=True)
    reporter = Progress(progress)
    reporter.step(f"compiling {len(config.stages)} stage(s) for {target.name} into {dest}")
    workdir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    try:
        stages = [compile_stage(stage, config_path, config, workdir, reporter) for stage in config.stages]
        if not keep_raw:
            for p in workdir.glob("*.raw.onnx"):
                p.unlink()
            for pattern in ("*.int8.onnx", "*.qdq.onnx", "*.kept.onnx", "*.fp32-ref.onnx"):
                for p in workdir.glob(pattern):
                    p.unlink()
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            target=target,
            stages=stages,
            library_versions={lib: v for lib in LIBRARIES if (v := version_of(lib))},
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
