"""fit-head on a synthetic labelled folder, then compile with the head and check that the
compiled cascade separates held-out images the way the head learned."""

import numpy as np
import pytest
from PIL import Image, ImageDraw
from streetcascade.compile.models.head import load_head
from streetcascade.compile.pipeline import compile_cascade
from streetcascade.runtime import decode_image, load_engine_set
from support import write_config

from streetcascade.cli import main
from streetcascade.errors import CompileError
from streetcascade.manifest import read_manifest


def scene(rng, roadwork: bool) -> Image.Image:
    grey = int(rng.integers(90, 160))
    img = Image.new("RGB", (160, 120), (grey, grey, grey + 10))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 80, 160, 120], fill=(60, 60, 60))  # road
    if roadwork:
        for _ in range(int(rng.integers(2, 5))):  # orange cones with white stripes
            x = int(rng.integers(10, 140))
            draw.polygon([(x, 110), (x + 16, 110), (x + 8, 70)], fill=(255, 120, 0))
            draw.rectangle([x + 4, 90, x + 12, 94], fill=(255, 255, 255))
    return img


def make_folder(root, n_per_class, seed):
    rng = np.random.default_rng(seed)
    for label in ("roadwork", "no_roadwork"):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            scene(rng, label == "roadwork").save(root / label / f"{i}.jpg", quality=90)
    return root


def test_fit_head_compile_and_separate_held_out(tmp_path, tiny_dinov3_dir, capsys):
    data = make_folder(tmp_path / "train", 12, seed=0)
    (data / "roadwork" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really")
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "head": "head.safetensors"}], tmp_path / "e")
    assert main(["fit-head", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "head.safetensors"), "--l2", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "train accuracy 1.000" in out and "1 skipped" in out
    head = load_head(tmp_path / "head.safetensors", 128)
    assert head.linear.weight.abs().sum() > 0
    dest = compile_cascade(cfg, progress=False)
    stage = read_manifest(dest).stages[0]
    assert not stage.placeholder_weights and stage.graphs[0].parity.max_abs_prob_error < 1e-4
    held_out = make_folder(tmp_path / "test", 6, seed=1)
    correct = 0
    with load_engine_set(dest) as es:
        for label, want in (("roadwork", 1), ("no_roadwork", 0)):
            for p in (held_out / label).iterdir():
                correct += es.cascade.classify(decode_image(p.read_bytes())).label == want
    assert correct >= 10, f"{correct}/12 held-out images right"


def test_head_of_wrong_size_is_refused(tmp_path, tiny_dinov3_dir):
    from streetcascade.compile.models.head import random_head, save_head

    save_head(random_head(96, 0), tmp_path / "h.safetensors")
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "head": "h.safetensors"}], tmp_path / "e")
    with pytest.raises(CompileError, match="do not fit a backbone with 128 features"):
        compile_cascade(cfg, progress=False)


def test_head_file_missing_or_garbage(tmp_path, tiny_dinov3_dir):
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "head": "h.safetensors"}], tmp_path / "e")
    with pytest.raises(CompileError, match="file not found"):
        compile_cascade(cfg, progress=False)
    (tmp_path / "h.safetensors").write_bytes(b"garbage")
    with pytest.raises(CompileError, match="not a readable safetensors"):
        compile_cascade(cfg, progress=False)


def test_fit_needs_both_classes(tmp_path, tiny_dinov3_dir, capsys):
    data = make_folder(tmp_path / "d", 3, seed=2)
    for p in (data / "no_roadwork").iterdir():
        p.unlink()
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir)}], tmp_path / "e")
    assert main(["fit-head", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "h.safetensors")]) == CompileError.exit_code
    assert "both classes" in capsys.readouterr().err
