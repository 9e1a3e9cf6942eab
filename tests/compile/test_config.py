import pytest

from streetcascade.config import load_config
from streetcascade.errors import ConfigError

GOOD = """
[[stages]]
name = "stage1"
family = "dinov3"
source = "random:tiny"
"""


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    stage = config.stages[0]
    assert (stage.exit_low, stage.exit_high, stage.input_size, stage.precision) == (0.15, 0.85, 224, "fp32")
    assert config.target.backend == "onnxruntime" and config.runtime.budget_bytes == 24 * 1024**3


def test_unknown_field_names_its_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD + 'colour = "red"\n'))
    assert "colour" in str(info.value) and "$.stages[0]" in str(info.value)


def test_unknown_top_level_field(tmp_path):
    with pytest.raises(ConfigError, match="budget"):
        load_config(write(tmp_path, "budget = 3\n" + GOOD))


def test_wrong_type_names_field(tmp_path):
    with pytest.raises(ConfigError, match=r"exit_low"):
        load_config(write(tmp_path, GOOD + 'exit_low = "low"\n'))


def test_bad_precision_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="precision"):
        load_config(write(tmp_path, GOOD + 'precision = "int3"\n'))


def test_inverted_thresholds(tmp_path):
    with pytest.raises(ConfigError, match="exit_low <= exit_high"):
        load_config(write(tmp_path, GOOD + "exit_low = 0.9\nexit_high = 0.1\n"))


def test_duplicate_stage_names(tmp_path):
    with pytest.raises(ConfigError, match="unique"):
        load_config(write(tmp_path, GOOD + GOOD))


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[[stages]\nname="))


def test_no_stages(tmp_path):
    with pytest.raises(ConfigError, match="stages"):
        load_config(write(tmp_path, "stages = []\n"))


def test_default_config_parses():
    from support import REPO

    config = load_config(REPO / "configs" / "default.toml")
    assert config.stages[0].family == "dinov3"
