"""A backend is one file in runtime/backends/ + one in compile/targets/ + a line in each
registry: the fake backend has exactly that shape, and a config with `backend = "fake"` goes
through the unchanged pipeline, manifest, memory plan, loader and cascade."""

import pytest
from streetcascade.compile import models
from streetcascade.compile.pipeline import compile_cascade
from streetcascade.runtime import decode_image, load_engine_set, resize_to, sigmoid
from support import SAMPLES, write_config

from streetcascade.cli import main
from streetcascade.errors import CompileError
from streetcascade.manifest import read_manifest


@pytest.fixture
def mean_pixel(monkeypatch):
    monkeypatch.setitem(models.FAMILIES.entries, "mean-pixel", "mean_pixel_family:FAMILY")


def test_compile_and_run_on_the_fake_backend(tmp_path, mean_pixel, capsys):
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "mean-pixel", "source": "random:none", "max_batch": 4}],
                       tmp_path / "engines", target={"backend": "fake"})
    dest = compile_cascade(cfg, progress=False)
    assert dest.name.startswith("fake-")
    manifest = read_manifest(dest)
    graph = manifest.stages[0].graphs[0]
    assert manifest.target.backend == "fake" and graph.file == "stage1.classifier.fp32.json"
    assert graph.parity.max_abs_prob_error < 1e-6 and graph.memory.method == "fake"
    rgb = decode_image((SAMPLES / "street-barrier.jpg").read_bytes())
    with load_engine_set(dest) as es:
        decision = es.cascade.classify(rgb)
    want = sigmoid((resize_to(rgb, 224).astype(float).mean() - 127.5) / 32.0)
    assert decision.probability == pytest.approx(float(want), abs=1e-5)
    assert main(["info", "--config", str(cfg)]) == 0
    assert "fake on cpu" in capsys.readouterr().out


def test_fake_target_refuses_what_it_cannot_build(tmp_path, mean_pixel):
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "mean-pixel", "source": "random:none", "precision": "int8-dynamic"}],
                       tmp_path / "engines", target={"backend": "fake"})
    with pytest.raises(CompileError, match="precision 'int8-dynamic' is not available for the fake target"):
        compile_cascade(cfg, progress=False)
