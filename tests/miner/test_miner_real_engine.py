"""The miner serving a real compiled engine set (ONNX Runtime), not the fake: the answer for
a sample photo equals what the runtime gives for the same decoded image."""

import base64

import httpx
import pytest
from streetcascade.runtime import decode_image, load_engine_set

from bench.dendrite_client import signed_headers, synapse_body
from streetcascade.settings import StageThresholds


def test_serves_compiled_engine_set(tiny_engine_dir, keys, server_factory, sample_bytes):
    data = sample_bytes["street-barrier.jpg"]
    with load_engine_set(tiny_engine_dir) as es:
        want = es.cascade.classify(decode_image(data)).probability
        port = server_factory(stages=es.cascade.stages).ports[0]
        body = synapse_body(base64.b64encode(data).decode(), "ImageSynapse", 12.0, {}, {})
        with httpx.Client() as client:
            resp = client.post(f"http://127.0.0.1:{port}/ImageSynapse", content=body,
                               headers=signed_headers(keys["validator"], keys["miner"].ss58_address))
        assert resp.status_code == 200, resp.text
        assert resp.json()["prediction"] == pytest.approx(want, abs=1e-6)


def test_serve_applies_tuned_thresholds_from_cascade_config(tiny_engine_dir, tiny_config, tmp_path):
    """[engine] cascade_config: the config's exit thresholds/temperature reach the served cascade."""
    from streetcascade.miner.cli import build_cascade
    from streetcascade.miner.config import load_miner_config

    tuned = tmp_path / "tuned.toml"
    tuned.write_text(tiny_config.read_text().replace('name = "stage1"', 'name = "stage1"\nexit_low = 0.3\nexit_high = 0.7\ntemperature = 2.5'))
    miner_toml = tmp_path / "miner.toml"
    miner_toml.write_text(f'[[hotkeys]]\nport = 1\nhotkey_file = "k"\n[engine]\nengine = "{tiny_engine_dir}"\ncascade_config = "tuned.toml"\n'
                          '[chain]\nmetagraph = "static"\n[[chain.static_neurons]]\nhotkey = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"\n')
    cascade, close = build_cascade(load_miner_config(miner_toml))
    try:
        stage = cascade.stages[0]
        assert stage.thresholds == StageThresholds(0.3, 0.7, 2.5)
    finally:
        close()


def test_cascade_overrides_read_the_named_cascade_config(tiny_config, tmp_path):
    """serve, doctor and ray-deploy take [engine] cascade_config's thresholds from cascade_overrides."""
    from streetcascade.miner.config import cascade_overrides, load_miner_config

    head = '[[hotkeys]]\nport = 1\nhotkey_file = "k"\n[engine]\nengine = "engines/x"\n'
    tuned = tmp_path / "tuned.toml"
    tuned.write_text(tiny_config.read_text().replace('name = "stage1"', 'name = "stage1"\nexit_low = 0.2\nexit_high = 0.8\ntemperature = 1.5'))
    plain, named = tmp_path / "plain.toml", tmp_path / "named.toml"
    plain.write_text(head)
    named.write_text(head + 'cascade_config = "tuned.toml"\n')
    assert cascade_overrides(load_miner_config(plain)) == (None, None)
    thresholds, rules = cascade_overrides(load_miner_config(named))
    assert thresholds["stage1"] == StageThresholds(0.2, 0.8, 1.5)
    assert rules == {}  # stage1 is a classifier: no combination rule


def test_config_naming_a_stage_the_engine_set_lacks(tiny_engine_dir):
    from streetcascade.errors import EngineMismatch

    with pytest.raises(EngineMismatch, match="stage2"):
        load_engine_set(tiny_engine_dir, thresholds={"stage2": StageThresholds(0.1, 0.9, 1.0)})


def test_miner_config_runtime_table_reaches_the_engine_set(tiny_engine_dir, tmp_path):
    """[runtime] in miner.toml: budget (refused before loading), spinning, margin; old [engine] keys say where they went."""
    from streetcascade.miner.cli import build_cascade
    from streetcascade.miner.config import load_miner_config

    from streetcascade.errors import BudgetExceeded, ConfigError

    head = '[[hotkeys]]\nport = 1\nhotkey_file = "k"\n[chain]\nmetagraph = "static"\n[[chain.static_neurons]]\nhotkey = "x"\n'
    miner_toml = tmp_path / "miner.toml"
    miner_toml.write_text(head + f'[engine]\nengine = "{tiny_engine_dir}"\n[runtime]\nsafety_margin_ms = 123.0\nspin_wait = false\nslots = 2\n')
    cfg = load_miner_config(miner_toml)
    cascade, close = build_cascade(cfg)
    try:
        assert cascade.safety_margin_ms == 123.0 and cfg.runtime.slots == 2
        session = cascade.stages[0].engine.session
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    finally:
        close()
    miner_toml.write_text(head + f'[engine]\nengine = "{tiny_engine_dir}"\n[runtime]\nbudget_bytes = 1000\n')
    with pytest.raises(BudgetExceeded, match=r"budget 0\.00 MiB: DOES NOT FIT"):
        build_cascade(load_miner_config(miner_toml))
    miner_toml.write_text(head + '[engine]\nengine = "fake"\ninference_threads = 4\n')
    with pytest.raises(ConfigError, match=r"\[engine\] inference_threads moved to \[runtime\] slots"):
        load_miner_config(miner_toml)
    miner_toml.write_text(head + '[runtime]\nslots = 0\n')
    with pytest.raises(ConfigError, match=r"Expected `int` >= 1 - at `\$.runtime.slots`"):
        load_miner_config(miner_toml)
