"""The issue's parity bar at real sizes: DINOv3 ViT-S/16 + head and a ViT-B/16 classifier
(random weights from the published architectures), compiled through the real pipeline."""

import pytest
from streetcascade.compile.pipeline import compile_cascade
from support import write_config

from streetcascade.manifest import read_manifest


@pytest.mark.slow
@pytest.mark.parametrize("family, source", [("dinov3", "random:vits16"), ("hf-classifier", "random:vitb16")])
def test_parity_below_1e4_at_real_size(tmp_path, family, source):
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": family, "source": source, "max_batch": 4}], tmp_path / "e")
    manifest = read_manifest(compile_cascade(cfg, progress=False))
    parity = manifest.stages[0].graphs[0].parity
    assert parity.max_abs_prob_error < 1e-4 and parity.decision_flips == 0.0
    assert parity.n_images >= 18  # 8 samples + 10 synthetic
    assert manifest.stages[0].placeholder_weights
