"""The stage check on a GPU engine set (TensorRT, else ONNX Runtime CUDA, else AOTInductor, as
`compile-engines --target auto` picks): the tiny stage 1 against PyTorch eager on the GPU, and a
2x slower engine failing. Skipped without an NVIDIA GPU."""

from __future__ import annotations

import msgspec
import pytest

from streetcascade.compile.latency import check_graph, timing_engine
from streetcascade.manifest import read_manifest

pytestmark = [pytest.mark.latency, pytest.mark.gpu]


@pytest.fixture(scope="module")
def gpu_set(tmp_path_factory, tiny_dinov3_dir):
    from support import write_config

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
    return cfg, compile_cascade(cfg, progress=False, target=target)


def verdict_for(gpu_set, reference_graphs, parity_images, wrap=None):
    cfg, engines = gpu_set
    manifest = read_manifest(engines)
    entry = manifest.stages[0].graphs[0]
    graph = reference_graphs(cfg, "stage1")["classifier"]
    with timing_engine(engines / entry.file, entry.io, manifest.target) as engine:
        return check_graph(wrap(engine) if wrap else engine, graph, parity_images, manifest.target.device, entry.latency,
                           label=f"{manifest.target.name}: stage1 vs {entry.latency.reference}")


def test_gpu_stage1_within_the_recorded_ratio(gpu_set, reference_graphs, parity_images):
    verdict = verdict_for(gpu_set, reference_graphs, parity_images)
    assert verdict.passed, verdict.describe()


def test_a_2x_slower_gpu_engine_fails(gpu_set, reference_graphs, parity_images, twice_as_slow):
    verdict = verdict_for(gpu_set, reference_graphs, parity_images, wrap=twice_as_slow)
    assert not verdict.passed, verdict.describe()
