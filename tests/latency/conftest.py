"""The engine sets the latency-regression suite times, built once per session: stage 1 (a tiny
DINOv3 from its real config class) with every CPU target installed (and on the GPU target, where
there is one), and the tiny two-stage cascade (stage 1 + PP-OCR on its real weights). Each
manifest holds the engine-vs-reference ratios measured when it was compiled; the tests hold this
run's ratios to them (`check_set`)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from support import SAMPLES, compile_or_skip, ocr_cascade_stages, twice_as_long, write_config


@dataclass
class LatencySet:
    name: str
    config: Path
    engines: Path


# The manifest's latency ratios are measured at compile time (tests elsewhere skip them).
RECORDED = {"latency_runs": 30}


@pytest.fixture(scope="session")
def stage1_sets(tmp_path_factory, tiny_dinov3_dir) -> dict[str, LatencySet]:
    """Stage 1 per CPU target installed."""
    from streetcascade.compile.pipeline import compile_cascade

    sets = {}
    for backend in ("onnxruntime", "openvino"):
        if importlib.util.find_spec(backend) is None:
            continue
        root = tmp_path_factory.mktemp(f"lat-{backend}")
        cfg = write_config(root / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4}],
                           root / "engines", target={"backend": backend, **RECORDED})
        sets[backend] = LatencySet(f"stage1-{backend}", cfg, compile_cascade(cfg, progress=False))
    return sets


@pytest.fixture(scope="session")
def cascade_set(tmp_path_factory, tiny_dinov3_dir) -> LatencySet:
    """Stage 1 never sure (its band covers everything), then PP-OCR: every image runs both."""
    pytest.importorskip("cv2", exc_type=ImportError)
    pytest.importorskip("rapidfuzz", exc_type=ImportError)
    root = tmp_path_factory.mktemp("lat-cascade")
    cfg = write_config(root / "c.toml", ocr_cascade_stages(tiny_dinov3_dir), root / "engines", target=RECORDED)
    return LatencySet("stage1+ocr", cfg, compile_or_skip(cfg, "PP-OCR"))


@pytest.fixture(scope="module")
def gpu_set(tmp_path_factory, tiny_dinov3_dir) -> LatencySet:
    """Stage 1 on the GPU target `compile-engines --target auto` picks (TensorRT, else ONNX
    Runtime CUDA, else AOTInductor)."""
    import msgspec

    from streetcascade.cli import GPU_TARGETS
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.compile.targets import detect_gpu_target
    from streetcascade.config import load_config

    root = tmp_path_factory.mktemp("lat-gpu")
    cfg = write_config(root / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4}], root / "engines",
                       target={"latency_runs": 30})
    backend, device, provider = GPU_TARGETS[detect_gpu_target()]
    config = load_config(cfg)
    target = msgspec.structs.replace(config.target, backend=backend, device=device, execution_provider=provider or config.target.execution_provider)
    return LatencySet(f"stage1-{backend}", cfg, compile_cascade(cfg, progress=False, target=target))


@pytest.fixture(scope="session")
def reference_graphs():
    """(config, stage name) -> {role: ExportableGraph}: a stage loaded again from its config (the
    module PyTorch eager runs, or the source ONNX graph), cached for the session."""
    cache: dict[tuple[str, str], dict] = {}

    def get(config: Path, stage_name: str) -> dict:
        key = (str(config), stage_name)
        if key not in cache:
            from streetcascade.compile.models import get_family
            from streetcascade.config import load_config

            cfg = load_config(config)
            stage = next(s for s in cfg.stages if s.name == stage_name)
            cache[key] = {g.decl.role: g for g in get_family(stage.family).load(stage, config).graphs}
        return cache[key]

    return get


@pytest.fixture(scope="session")
def check_set(reference_graphs):
    """(latency set, images, wrap=None, **tolerance) -> one verdict per graph of the set: each
    engine (wrapped by `wrap`) timed against its reference and held to the manifest's ratio."""
    from streetcascade.compile.latency import check_graph, timing_engine
    from streetcascade.manifest import read_manifest

    def graphs_of(latency_set):
        """(stage, graph entry, exportable graph) for every graph of the set, and its target."""
        manifest = read_manifest(latency_set.engines)
        out = []
        for stage in manifest.stages:
            refs = reference_graphs(latency_set.config, stage.name)
            for entry in stage.graphs:
                assert entry.latency is not None, f"{latency_set.name}: {stage.name}/{entry.role} has no latency ratio in its manifest"
                out.append((stage, entry, refs[entry.role]))
        return out, manifest.target

    def check(latency_set, images, wrap=None, **kw):
        verdicts = []
        graphs, target = graphs_of(latency_set)
        for stage, entry, graph in graphs:
            with timing_engine(latency_set.engines / entry.file, entry.io, target) as engine:
                verdicts.append(check_graph(wrap(engine) if wrap else engine, graph, images, target.device, entry.latency,
                                            label=f"{latency_set.name}: {stage.name}/{entry.role} vs {entry.latency.reference}", **kw))
        return verdicts

    return check


@pytest.fixture(scope="session")
def parity_images() -> np.ndarray:
    from streetcascade.compile.parity import parity_images as images

    return images(224, SAMPLES)[0]


@pytest.fixture(scope="session")
def challenge() -> np.ndarray:
    """A sample photo as a validator sends it: 224 x 224 RGB, decoded."""
    from streetcascade.runtime import decode_image
    from streetcascade.runtime.images import resize_to

    return resize_to(decode_image((SAMPLES / "direction-sign.jpg").read_bytes()), 224)


class TwiceAsSlow:
    """A deliberate regression: every engine call is followed by as much busy work again, so it
    takes twice as long (running the engine twice would not: the second run finds warm caches)."""

    def __init__(self, engine):
        self.engine = engine

    def slot(self):
        return TwiceAsSlowSlot(self.engine.slot())


class TwiceAsSlowSlot:
    def __init__(self, slot):
        self.inner = slot

    def infer(self, feeds):
        return twice_as_long(lambda: self.inner.infer(feeds))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.inner.close()


@pytest.fixture(scope="session")
def twice_as_slow():
    """Wraps an engine so that every call takes twice as long (a deliberate regression)."""
    return TwiceAsSlow
