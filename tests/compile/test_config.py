import re

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


@pytest.mark.parametrize("line, path", [
    ("exit_low = -0.1", "$.stages[0].exit_low"),
    ("exit_high = 1.5", "$.stages[0].exit_high"),
    ("temperature = 0.0", "$.stages[0].temperature"),
    ("max_batch = 0", "$.stages[0].max_batch"),
    ("input_size = 16", "$.stages[0].input_size"),
])
def test_out_of_range_stage_values_name_their_path(tmp_path, line, path):
    with pytest.raises(ConfigError, match=re.escape(path)):
        load_config(write(tmp_path, GOOD + line + "\n"))


@pytest.mark.parametrize("table, path", [
    ("[runtime]\nbudget_bytes = 0", "$.runtime.budget_bytes"),
    ("[runtime]\nslots = 0", "$.runtime.slots"),
    ("[runtime]\nsafety_margin_ms = -1.0", "$.runtime.safety_margin_ms"),
    ("[runtime]\ndeadline_ms = 0.0", "$.runtime.deadline_ms"),
    ("[runtime]\nbudget = 1", "$.runtime"),
    ("[target]\nintra_op_threads = 2", "$.target"),  # moved to [runtime]
])
def test_runtime_table_is_checked(tmp_path, table, path):
    with pytest.raises(ConfigError, match=re.escape(path)):
        load_config(write(tmp_path, table + "\n" + GOOD))


def test_runtime_defaults_live_in_one_struct(tmp_path):
    import msgspec
    from streetcascade.miner.config import MinerConfig

    from streetcascade.settings import GIB, RuntimeConfig, StageThresholds

    config = load_config(write(tmp_path, GOOD))
    assert config.runtime == RuntimeConfig() and RuntimeConfig().budget_bytes == 24 * GIB
    assert config.stages[0].thresholds == StageThresholds()
    miner = msgspec.convert({"hotkeys": [{"port": 1, "hotkey_file": "k"}], "chain": {"metagraph": "static", "static_neurons": [{"hotkey": "x"}]}}, MinerConfig)
    assert miner.runtime == config.runtime


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
