import json
import shutil

import numpy as np
import pytest
from streetcascade.compile.pipeline import compile_cascade
from streetcascade.runtime import decode_image, load_engine_set
from streetcascade.runtime.images import resize_to
from support import write_config

from streetcascade.errors import CompileError
from streetcascade.manifest import read_manifest


def compile_vit(tmp_path, source, **stage):
    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "hf-classifier", "source": str(source), **stage}], tmp_path / "e")
    return compile_cascade(cfg, progress=False)


def reference_probability(source, images, positive):
    import torch
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(source).eval()
    x = (images.astype(np.float32) / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        logits = model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).logits
    return torch.softmax(logits.double(), -1)[:, positive].numpy()


def test_two_label_vit_parity_and_positive_label_by_name(tmp_path, tiny_vit_dir, sample_bytes):
    dest = compile_vit(tmp_path, tiny_vit_dir)
    stage = read_manifest(dest).stages[0]
    assert stage.graphs[0].parity.max_abs_prob_error < 1e-4
    assert not stage.placeholder_weights
    assert any("roadwork (index 1)" in n for n in stage.notes)
    images = np.stack([resize_to(decode_image(b), 224) for b in sample_bytes.values()])
    with load_engine_set(dest) as es:
        got = es.cascade.stages[0].score(list(images))
    assert np.abs(got - reference_probability(tiny_vit_dir, images, 1)).max() < 1e-4


def test_positive_label_override_flips_the_probability(tmp_path, tiny_vit_dir, sample_bytes):
    dest0 = compile_vit(tmp_path / "a", tiny_vit_dir)
    dest1 = compile_vit(tmp_path / "b", tiny_vit_dir, positive_label="no_roadwork")
    img = decode_image(next(iter(sample_bytes.values())))
    with load_engine_set(dest0) as a, load_engine_set(dest1) as b:
        pa, pb = a.cascade.classify(img).probability, b.cascade.classify(img).probability
    assert pa + pb == pytest.approx(1.0, abs=1e-5)


def test_unknown_positive_label(tmp_path, tiny_vit_dir):
    with pytest.raises(CompileError, match="positive_label 'cones'"):
        compile_vit(tmp_path, tiny_vit_dir, positive_label="cones")


def test_three_labels_need_a_positive_label(tmp_path, tiny_vit_dir):
    import torch
    from support import TINY_VIT
    from transformers import ViTConfig, ViTForImageClassification

    path = tmp_path / "vit3"
    torch.manual_seed(3)
    labels = {0: "clear", 1: "cones", 2: "excavator"}
    ViTForImageClassification(ViTConfig(**TINY_VIT, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})).save_pretrained(path)
    with pytest.raises(CompileError, match="3 labels"):
        compile_vit(tmp_path / "x", path)
    dest = compile_vit(tmp_path / "y", path, positive_label="cones")
    assert read_manifest(dest).stages[0].graphs[0].parity.max_abs_prob_error < 1e-4


def test_checkpoint_without_weights(tmp_path, tiny_vit_dir):
    broken = tmp_path / "noweights"
    shutil.copytree(tiny_vit_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CompileError, match="cannot load"):
        compile_vit(tmp_path, broken)


def test_config_json_garbage(tmp_path, tiny_vit_dir):
    broken = tmp_path / "badcfg"
    shutil.copytree(tiny_vit_dir, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CompileError, match="cannot load config"):
        compile_vit(tmp_path, broken)


def test_preprocessor_config_is_used(tmp_path, tiny_vit_dir):
    """A checkpoint trained with other normalisation must be exported with it."""
    other = tmp_path / "othernorm"
    shutil.copytree(tiny_vit_dir, other)
    (other / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.9, 0.8, 0.7]}))
    a = read_manifest(compile_vit(tmp_path / "a", tiny_vit_dir))
    b = read_manifest(compile_vit(tmp_path / "b", other))
    assert b.stages[0].graphs[0].parity.max_abs_prob_error < 1e-4
    assert a.stages[0].source_sha256 != b.stages[0].source_sha256


def test_processor_config_flags_and_garbage(tmp_path):
    from streetcascade.compile.models.base import Normalization, processor_normalization

    assert processor_normalization(tmp_path) == Normalization()  # no preprocessor_config.json
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False, "do_rescale": False}))
    assert processor_normalization(tmp_path) == Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0)
    (tmp_path / "preprocessor_config.json").write_text("{oops")
    with pytest.raises(CompileError, match="not valid JSON"):
        processor_normalization(tmp_path)
