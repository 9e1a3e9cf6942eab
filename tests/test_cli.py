import json

import pytest

from streetcascade.cli import build_parser, main
from streetcascade.errors import BadInput, ConfigError, EngineMismatch


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("compile", "classify", "info", "fit-head", "eval", "tune", "serve", "register"):
        assert cmd in out
    assert "bench" not in out  # benchmarks are scripts in the checkout (python -m bench.stage1), not the product


def test_classify_folder_keeps_going_past_bad_files(tiny_engine_dir, tmp_path, capsys, sample_bytes):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, data in list(sample_bytes.items())[:3]:
        (folder / name).write_bytes(data)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (folder / "half.jpg").write_bytes(list(sample_bytes.values())[0][:500])
    code = main(["classify", "--engines", str(tiny_engine_dir), "--json", str(folder)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ok = [x for x in lines if "probability" in x]
    bad = [x for x in lines if "error" in x]
    assert len(ok) == 3 and all(0 <= x["probability"] <= 1 and x["stage"] == "stage1" for x in ok)
    assert sorted(x["path"].rsplit("/", 1)[1] for x in bad) == ["broken.jpg", "half.jpg"]
    assert code == BadInput.exit_code  # partial failure is visible to scripts


def test_classify_table_and_placeholder_warning(tiny_engine_dir, capsys):
    from support import SAMPLES

    assert main(["classify", "--engines", str(tiny_engine_dir), str(SAMPLES)]) == 0
    captured = capsys.readouterr()
    assert "p(roadwork)" in captured.out and "street-barrier.jpg" in captured.out
    assert "8 image(s) decided" in captured.out
    assert "PLACEHOLDER" in captured.err


def test_classify_nothing_classifiable(tiny_engine_dir, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"nope")
    assert main(["classify", "--engines", str(tiny_engine_dir), str(tmp_path / "x.png"), str(tmp_path / "missing.jpg")]) == BadInput.exit_code
    out = capsys.readouterr()
    assert "no image could be classified" in out.err and "cannot read" in out.out


def test_info_human_and_json(tiny_engine_dir, capsys):
    assert main(["info", "--engines", str(tiny_engine_dir)]) == 0
    out = capsys.readouterr().out
    assert "parity" in out and "PLACEHOLDER" in out and "onnxruntime" in out
    assert "memory    weights" in out and "plan        " in out and "for 1 slot(s), budget 24576 MiB" in out
    assert main(["info", "--engines", str(tiny_engine_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format_version"] == 2 and doc["stages"][0]["graphs"][0]["memory"]["method"] == "rss-peak"


def test_exit_codes_from_error_tree(tmp_path, capsys):
    assert main(["info", "--engines", str(tmp_path)]) == EngineMismatch.exit_code
    assert "no manifest.json" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[[stages]]\nname='s'\nfamily='dinov3'\nsource='random:tiny'\nwhat=1\n")
    assert main(["compile", "--config", str(bad)]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "what" in err and err.count("\n") == 1


def test_compile_then_classify_via_config(tmp_path, tiny_dinov3_dir, capsys):
    from support import SAMPLES, write_config

    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir)}], tmp_path / "engines")
    assert main(["compile", "--config", str(cfg), "--quiet"]) == 0
    assert (tmp_path / "engines").is_dir()
    capsys.readouterr()
    assert main(["classify", "--config", str(cfg), "--json", str(SAMPLES / "street-barrier.jpg")]) == 0
    assert json.loads(capsys.readouterr().out)["stage"] == "stage1"


def test_classify_config_without_engines(tmp_path, capsys):
    from support import write_config

    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": "random:tiny"}], tmp_path / "none")
    assert main(["classify", "--config", str(cfg), "x.jpg"]) == ConfigError.exit_code
    assert "streetcascade compile" in capsys.readouterr().err


def test_parser_rejects_missing_source(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["classify", "x.jpg"])


def test_info_shows_accuracy_gate(engine_copy, capsys):
    path = engine_copy / "manifest.json"
    doc = json.loads(path.read_text())
    doc["stages"][0]["graphs"][0]["accuracy_gate"] = {
        "reference": "onnxruntime-fp32", "split": "validation", "n_images": 400, "n_calibration": 128, "method": "minmax",
        "quantized_nodes": 72, "flip_rate": 0.0025, "max_abs_prob_error": 0.05, "mean_abs_prob_error": 0.004,
        "accuracy_fp32": 0.9, "accuracy_quant": 0.9, "mcc_fp32": 0.8, "mcc_quant": 0.795, "auc_fp32": 0.95, "auc_quant": 0.95,
        "max_flip_rate": 0.005, "max_mcc_drop": 0.01, "max_accuracy_drop": 0.01, "max_auc_drop": 0.01, "passed": True,
        "kept_fp32": ["/model/layer.11/mlp/down_proj/MatMul"]}
    path.write_text(json.dumps(doc))
    assert main(["info", "--engines", str(engine_copy)]) == 0
    out = capsys.readouterr().out
    assert "flips 0.25% (limit 0.50%)" in out and "MCC 0.800 -> 0.795" in out and "down_proj" in out
