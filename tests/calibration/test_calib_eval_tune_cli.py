"""`streetcascade eval` and `streetcascade tune` end to end on a compiled two-stage cascade and a
synthetic labelled folder: the reward is printed, the report written, tune rewrites the config,
and the re-run reward is not lower."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib

from streetcascade.cli import main
from streetcascade.errors import BadInput, ConfigError


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    """(config path, data folder): stage 1 = tiny DINOv3 with a head fitted on the scenes, stage 2 = tiny ViT."""
    import torch
    from streetcascade.calibration.synthetic import write_scene_folder
    from support import TINY_VIT, write_config
    from transformers import (
        DINOv3ViTConfig,
        DINOv3ViTModel,
        ViTConfig,
        ViTForImageClassification,
    )

    root = tmp_path_factory.mktemp("evaltune")
    data = write_scene_folder(root / "data", 40, seed=5, size=(160, 120), sources=True)
    torch.manual_seed(0)
    DINOv3ViTModel(DINOv3ViTConfig(**TINY_VIT, patch_size=16, num_register_tokens=4, layerscale_value=1.0, image_size=224)).save_pretrained(root / "dino")
    torch.manual_seed(1)
    ViTForImageClassification(ViTConfig(**TINY_VIT, image_size=224, num_labels=2)).save_pretrained(root / "vit")
    stages = [
        {"name": "stage1", "family": "dinov3", "source": str(root / "dino"), "head": str(root / "head.safetensors"), "max_batch": 8},
        {"name": "stage2", "family": "hf-classifier", "source": str(root / "vit"), "max_batch": 8},
    ]
    cfg = write_config(root / "cascade.toml", stages, root / "engines")
    assert main(["fit-head", "--config", str(cfg), "--data", str(data), "--out", str(root / "head.safetensors")]) == 0
    assert main(["compile", "--config", str(cfg), "--quiet"]) == 0
    return cfg, data


def _reward(out: Path) -> float:
    return json.loads((out / "report.json").read_text())["reward"]["steady_mean_reward"]


def test_eval_tune_eval(cascade, tmp_path, capsys):
    cfg, data = cascade
    before_cfg = tomllib.loads(cfg.read_text())
    out1 = tmp_path / "r1"
    assert main(["eval", "--config", str(cfg), "--data", str(data), "--split", "all", "--out", str(out1)]) == 0
    printed = capsys.readouterr().out
    assert "reward" in printed and "MCC" in printed and "per level" in printed and "per source" in printed
    assert "stage1:" in printed and "p99" in printed
    assert (out1 / "report.html").read_text().count("<figure>") >= 3
    report = json.loads((out1 / "report.json").read_text())
    assert report["n"] == 80 and set(report["per_source"]) == {"real", "synthetic"} and set(report["exit_rates"]) == {"stage1", "stage2"}
    assert (out1 / "hard_cases" / "hard_cases.csv").exists() and (out1 / "stages.json").exists()

    assert main(["tune", "--config", str(cfg), "--data", str(data), "--split", "all"]) == 0
    printed = capsys.readouterr().out
    assert "reward" in printed and "written to" in printed
    after_cfg = tomllib.loads(cfg.read_text())
    changed = [(a["exit_low"], a["exit_high"], a["temperature"]) for a in after_cfg["stages"]]
    assert changed != [(s.get("exit_low", 0.15), s.get("exit_high", 0.85), s.get("temperature", 1.0)) for s in before_cfg["stages"]]
    assert {k: v for k, v in after_cfg.items() if k != "stages"} == {k: v for k, v in before_cfg.items() if k != "stages"}

    out2 = tmp_path / "r2"
    assert main(["eval", "--config", str(cfg), "--data", str(data), "--split", "all", "--out", str(out2)]) == 0
    assert _reward(out2) >= _reward(out1) - 1e-12


def test_tune_dry_run_leaves_config(cascade, capsys):
    cfg, data = cascade
    text = cfg.read_text()
    assert main(["tune", "--config", str(cfg), "--data", str(data), "--split", "all", "--dry-run", "--latency-budget-ms", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and cfg.read_text() == text


def test_eval_bad_inputs(cascade, tmp_path, capsys):
    cfg, data = cascade
    assert main(["eval", "--config", str(cfg), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == ConfigError.exit_code
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--config", str(cfg), "--out", str(tmp_path / "r")]) == ConfigError.exit_code
    assert "no labelled data" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "roadwork").mkdir(parents=True)
    assert main(["eval", "--config", str(cfg), "--data", str(empty), "--split", "all", "--out", str(tmp_path / "r")]) == BadInput.exit_code
    assert main(["tune", "--config", str(cfg), "--parquet", str(tmp_path / "nope.parquet")]) == ConfigError.exit_code


def test_classify_with_config_applies_tuned_thresholds(cascade, tmp_path, capsys):
    """A config whose stage-1 band is empty (never escalate) makes every image exit at stage 1."""
    from support import SAMPLES

    from streetcascade.config import write_stage_thresholds
    from streetcascade.settings import StageThresholds

    cfg, _ = cascade
    copy = cfg.with_name("pinned.toml")
    copy.write_text(cfg.read_text())
    write_stage_thresholds(copy, {"stage1": StageThresholds(0.5, 0.5, 1.0)})
    assert main(["classify", "--config", str(copy), "--json", str(SAMPLES)]) == 0
    stages = {json.loads(line)["stage"] for line in capsys.readouterr().out.splitlines()}
    assert stages == {"stage1"}
    write_stage_thresholds(copy, {"stage1": StageThresholds(0.0, 1.0, 1.0)})  # everything escalates
    assert main(["classify", "--config", str(copy), "--json", str(SAMPLES)]) == 0
    stages = {json.loads(line)["stage"] for line in capsys.readouterr().out.splitlines()}
    assert stages == {"stage2"}


def test_write_stage_thresholds_keeps_comments_and_refuses_unknown(tmp_path):
    from streetcascade.config import write_stage_thresholds
    from streetcascade.settings import StageThresholds

    path = tmp_path / "c.toml"
    path.write_text('# keep me\n[[stages]]\nname = "s1"  # first\nfamily = "dinov3"\nsource = "random:tiny"\nexit_low = 0.15 # plan\n\n[runtime]\ndeadline_ms = 100.0\n')
    write_stage_thresholds(path, {"s1": StageThresholds(0.1, 0.9, 2.0)})
    text = path.read_text()
    assert "# keep me" in text and "# first" in text and "exit_low = 0.1 # plan" in text and "deadline_ms = 100.0" in text
    assert tomllib.loads(text)["stages"][0] == {"name": "s1", "family": "dinov3", "source": "random:tiny", "exit_low": 0.1, "exit_high": 0.9, "temperature": 2.0}
    with pytest.raises(ConfigError, match="no \\[\\[stages\\]\\] table"):
        write_stage_thresholds(path, {"other": StageThresholds(0.1, 0.9, 1.0)})
    invalid = StageThresholds(1.5, 2.0, 1.0)  # ranges are checked when a file is read, not in __init__
    with pytest.raises(ConfigError, match=r"file left unchanged: Expected `float` <= 1.0 - at `\$.stages\[0\].exit_low`"):
        write_stage_thresholds(path, {"s1": invalid})
    assert path.read_text() == text


def test_write_stage_thresholds_edits_inline_stage_tables(tmp_path):
    from streetcascade.config import load_config, write_stage_thresholds
    from streetcascade.settings import StageThresholds

    path = tmp_path / "c.toml"
    path.write_text('stages = [ { name = "a", family = "dinov3", source = "random:tiny" }, ]  # one line\n')
    write_stage_thresholds(path, {"a": StageThresholds(0.2, 0.7, 1.5)})
    assert load_config(path).stages[0].thresholds == StageThresholds(0.2, 0.7, 1.5)
    assert "# one line" in path.read_text()
