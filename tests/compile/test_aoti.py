"""The AOTInductor target and backend on this CPU: torch.export + aoti_compile_and_package of a
family module, loaded back through the backend, parity-checked like every target. (On a GPU
the same target adds CUDA-graph replay: tests/gpu/test_gpu.py.)"""

import shutil

import msgspec
import numpy as np
import pytest
from streetcascade.compile import models
from streetcascade.compile.pipeline import compile_cascade
from streetcascade.manifest import read_manifest, write_manifest
from streetcascade.runtime import load_engine_set
from support import write_config

from streetcascade.errors import CompileError, EngineMismatch


@pytest.fixture(scope="module")
def aoti_engine_dir(tmp_path_factory):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler here: AOTInductor cannot build for the CPU")
    mp = pytest.MonkeyPatch()
    mp.setitem(models.FAMILIES.entries, "mean-pixel", "mean_pixel_family:FAMILY")
    root = tmp_path_factory.mktemp("aoti")
    cfg = write_config(root / "c.toml", [{"name": "stage1", "family": "mean-pixel", "source": "random:none", "max_batch": 4}],
                       root / "engines", target={"backend": "aoti", "device": "cpu"})
    try:
        yield compile_cascade(cfg, progress=False)
    finally:
        mp.undo()


def test_aoti_package_compiles_loads_and_matches(aoti_engine_dir):
    m = read_manifest(aoti_engine_dir)
    g = m.stages[0].graphs[0]
    assert aoti_engine_dir.name.endswith("-aoti") and m.target.backend == "aoti" and g.file.endswith(".pt2")
    assert g.build.builder.endswith(" aoti") and g.build.profiles["pixels"][2] == [4, 224, 224, 3]
    assert g.parity.max_abs_prob_error < 1e-5 and "torch" in m.library_versions
    assert "AOTInductor built with freezing" in m.stages[0].notes  # what the target said reaches the manifest
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 224, 224, 3), dtype=np.uint8)
    with load_engine_set(aoti_engine_dir) as es:
        got = es.cascade.stages[0].score(list(images))
    want = 1 / (1 + np.exp(-(images.reshape(6, -1).astype(np.float64).mean(1) - 127.5) / 32.0))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_aoti_refuses_another_torch(aoti_engine_dir, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(aoti_engine_dir, dest)
    m = read_manifest(dest)
    write_manifest(dest, msgspec.structs.replace(m, library_versions={**m.library_versions, "torch": "1.13.1"}))
    with pytest.raises(EngineMismatch, match="torch 1.13.1"):
        load_engine_set(dest)


def test_aoti_fp16_only_on_gpu(tmp_path, monkeypatch):
    monkeypatch.setitem(models.FAMILIES.entries, "mean-pixel", "mean_pixel_family:FAMILY")
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "mean-pixel", "source": "random:none", "precision": "fp16"}],
                       tmp_path / "engines", target={"backend": "aoti", "device": "cpu"})
    with pytest.raises(CompileError, match="fp16 is built by the aoti target on cuda only"):
        compile_cascade(cfg, progress=False)
