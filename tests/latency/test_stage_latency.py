"""Per stage: every graph's batch-1 latency against its reference (PyTorch eager on the same
module, or the source ONNX graph for PP-OCR), re-measured side by side in this run and held to
the ratio the manifest recorded at compile time. A 2x slower engine fails."""

from __future__ import annotations

import pytest
from streetcascade.compile.latency import Tolerance
from streetcascade.manifest import read_manifest

pytestmark = pytest.mark.latency


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_stage1_within_the_recorded_ratio(stage1_sets, check_set, parity_images, target):
    if target not in stage1_sets:
        pytest.skip(f"{target} is not installed: no engine set for it")
    for verdict in check_set(stage1_sets[target], parity_images):
        assert verdict.passed, verdict.describe()


def test_ocr_stage_within_the_recorded_ratio(cascade_set, check_set, parity_images):
    verdicts = check_set(cascade_set, parity_images)
    assert [v.label.split(": ")[1].split(" ")[0] for v in verdicts] == ["stage1/classifier", "ocr/detector", "ocr/recognizer"]
    for verdict in verdicts:
        assert verdict.passed, verdict.describe()


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_a_2x_slower_engine_fails(stage1_sets, check_set, parity_images, twice_as_slow, target):
    if target not in stage1_sets:
        pytest.skip(f"{target} is not installed: no engine set for it")
    (verdict,) = check_set(stage1_sets[target], parity_images, wrap=twice_as_slow)
    assert not verdict.passed, f"a 2x slower engine passed: {verdict.describe()}"
    # Every attempt saw it: the p50 ratio rose well past the tolerance, not just over it by luck.
    recorded = verdict.baseline[0]
    assert all(p50 > recorded * Tolerance().p50 for p50, _ in verdict.attempts), verdict.describe()


def test_compile_records_the_ratio_once_per_kept_graph(tmp_path, tiny_dinov3_dir):
    """`backend = "auto"` times only the target it keeps; latency_runs = 0 records nothing."""
    from support import write_config

    from streetcascade.compile.pipeline import compile_cascade

    stage = {"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 2}
    auto = compile_cascade(write_config(tmp_path / "a.toml", [stage], tmp_path / "e1", target={"backend": "auto", "latency_runs": 10}),
                           progress=False)
    manifest = read_manifest(auto)
    lat = manifest.stages[0].graphs[0].latency
    assert lat is not None and lat.reference == "pytorch-eager-cpu" and lat.batch == 1 and 10 <= lat.runs <= 200
    assert lat.engine_p50_ms > 0 and lat.reference_p50_ms > 0 and lat.ratio_p99 == pytest.approx(lat.engine_p99_ms / lat.reference_p99_ms, rel=1e-2)
    assert manifest.target.selection is not None
    off = compile_cascade(write_config(tmp_path / "b.toml", [stage], tmp_path / "e2", target={"latency_runs": 0}), progress=False)
    assert read_manifest(off).stages[0].graphs[0].latency is None
