"""The bundle a one-file artifact carries: exactly the manifest's files and the config, each
checked by hash at start; the packed config resolved against a writable state dir, never the
artifact; the hotkey never packed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from streetcascade.errors import ArtifactTampered, ConfigError
from streetcascade.manifest import read_manifest
from streetcascade.ship.build import PackageOptions, stage_sources
from streetcascade.ship.bundle import BUNDLE_PACKAGE, read_bundle, verify_bundle
from streetcascade.ship.entry import bundled_config, state_dir

MINER_TOML = """
host = "127.0.0.1"
metrics_port = 0
[[hotkeys]]
port = 8091
wallet_name = "miner"
wallet_hotkey = "default"
[[hotkeys]]
port = 8092
hotkey_file = "keys/hot2"
[engine]
engine = "somewhere/else"
[chain]
metagraph = "chain"
"""


@pytest.fixture
def staged(tmp_path, engine_copy):
    """A staged artifact root (what pex packs) from the tiny engine set, with a stray key file
    lying in the engine folder."""
    (engine_copy / "hotkey-do-not-pack.json").write_text("{}")
    config = tmp_path / "miner.toml"
    config.write_text(MINER_TOML)
    manifest = read_manifest(engine_copy)
    stage = tmp_path / "src"
    info = stage_sources(stage, PackageOptions(engines=engine_copy, config=config, out=tmp_path / "x.pex"), manifest, None,
                         ["numpy==1"], "pex test", "3.11", "linux-x86_64")
    return stage / BUNDLE_PACKAGE, info, manifest


def test_the_bundle_holds_the_listed_files_only(staged):
    root, info, manifest = staged
    engines = root / info.engines_dir
    listed = {"manifest.json", *(g.file for s in manifest.stages for g in s.graphs)}
    assert {p.name for p in engines.iterdir()} == listed
    assert read_bundle(root) == info and info.target == manifest.target.name and info.cascade_config is None
    verify_bundle(root, info)
    # Our online code is staged next to it, the offline side is not.
    src = root.parent / "streetcascade"
    assert (src / "runtime" / "load.py").exists() and (src / "miner" / "server.py").exists() and (src / "ship" / "entry.py").exists()
    assert not (src / "compile").exists() and not (src / "calibration").exists() and not (src / "cli.py").exists()
    assert not (src / "ship" / "build.py").exists()


@pytest.mark.parametrize("what", ["config", "manifest"])
def test_a_file_changed_after_packing_is_refused(staged, what):
    root, info, _ = staged
    path = root / (info.config.path if what == "config" else info.manifest.path)
    path.write_bytes(path.read_bytes().replace(b"8091", b"8093") if what == "config" else path.read_bytes() + b" ")
    with pytest.raises(ArtifactTampered, match="changed afterwards") as err:
        verify_bundle(root, info)
    assert err.value.exit_code == 5 and path.name in str(err.value)


def test_a_missing_or_garbled_bundle_is_refused(staged):
    root, info, _ = staged
    (root / info.config.path).unlink()
    with pytest.raises(ArtifactTampered, match="missing now"):
        verify_bundle(root, info)
    (root / "bundle.json").write_text("{not json")
    with pytest.raises(ArtifactTampered, match="unreadable"):
        read_bundle(root)
    (root / "bundle.json").unlink()
    with pytest.raises(ArtifactTampered, match="missing"):
        read_bundle(root)


def test_the_packed_config_runs_the_packed_engines_with_state_outside(staged, tmp_path, monkeypatch):
    root, info, _ = staged
    state = state_dir(str(tmp_path / "state"), root)
    cfg = bundled_config(root, info, state, None)
    assert cfg.engine.engine == str(root / info.engines_dir)  # not the config's "somewhere/else"
    assert cfg.hotkeys[0].wallet_path.endswith(".bittensor/wallets") and cfg.hotkeys[1].hotkey_file == str(state / "keys/hot2")
    assert cfg.log_file == str(state / "logs/miner.log") and cfg.chain.snapshot_path == str(state / "metagraph.json")
    monkeypatch.setenv("STREETCASCADE_WALLET_PATH", "/mnt/wallets")
    cfg = bundled_config(root, info, state, None)
    assert cfg.hotkeys[0].wallet_path == "/mnt/wallets" and cfg.hotkeys[1].hotkey_file == str(state / "keys/hot2")
    assert bundled_config(root, info, state, "/elsewhere").hotkeys[0].wallet_path == "/elsewhere"


def test_the_state_dir_is_writable_and_outside_the_artifact(staged, tmp_path, monkeypatch):
    root, _, _ = staged
    with pytest.raises(ConfigError, match="inside the artifact"):
        state_dir(str(root / "state"), root)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="not writable"):
        state_dir(str(blocker / "state"), root)
    monkeypatch.setenv("STREETCASCADE_STATE_DIR", str(tmp_path / "from-env"))
    assert state_dir(None, root) == (tmp_path / "from-env").resolve() and (tmp_path / "from-env").is_dir()
    monkeypatch.delenv("STREETCASCADE_STATE_DIR")
    monkeypatch.chdir(tmp_path)
    assert state_dir(None, root) == (tmp_path / "streetcascade-state").resolve()


def test_a_cascade_config_is_packed_and_hashed(tmp_path, engine_copy, tiny_config):
    config = tmp_path / "miner.toml"
    config.write_text(MINER_TOML.replace('engine = "somewhere/else"', f'engine = "x"\ncascade_config = {json.dumps(str(tiny_config))}'))
    stage = tmp_path / "src"
    info = stage_sources(stage, PackageOptions(engines=engine_copy, config=config, out=tmp_path / "x.pex"), read_manifest(engine_copy),
                         Path(tiny_config), [], "pex test", "3.11", "linux-x86_64")
    root = stage / BUNDLE_PACKAGE
    assert info.cascade_config is not None and (root / info.cascade_config.path).read_bytes() == Path(tiny_config).read_bytes()
    cfg = bundled_config(root, info, state_dir(str(tmp_path / "s"), root), None)
    assert cfg.engine.cascade_config == str(root / info.cascade_config.path)
    shutil.copy(config, root / info.cascade_config.path)
    with pytest.raises(ArtifactTampered):
        verify_bundle(root, info)


def test_package_refuses_bad_input(tmp_path, tiny_engine_dir, capsys):
    from streetcascade.cli import main
    from streetcascade.errors import EngineMismatch
    from streetcascade.ship.build import check_arch

    config = tmp_path / "miner.toml"
    config.write_text(MINER_TOML)
    out = str(tmp_path / "m.pex")
    assert main(["package", "--engines", str(tmp_path / "nope"), "--config", str(config), "-o", out, "-q"]) == 5
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["package", "--engines", str(tiny_engine_dir), "--config", str(config), "-o", out, "--python-version", "3.12",
                 "--platform", "manylinux2014_x86_64", "-q"]) == 2
    assert "--resolve index" in capsys.readouterr().err
    assert main(["package", "--engines", str(tiny_engine_dir), "--config", str(config), "-o", out, "--tool", "shiv", "--layout", "packed", "-q"]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text(MINER_TOML + "\nnope = 1\n")
    assert main(["package", "--engines", str(tiny_engine_dir), "--config", str(bad), "-o", out, "-q"]) == 2
    assert "nope" in capsys.readouterr().err and not Path(out).exists()
    with pytest.raises(EngineMismatch, match="is for x86_64"):
        check_arch(read_manifest(tiny_engine_dir), "manylinux2014_aarch64")


def test_the_artifact_digest_is_sha256sum_of_a_file_and_covers_names_in_a_folder(tmp_path):
    """The .sha256 written next to the artifact: a one-file artifact's is what `sha256sum -c` checks;
    a packed (folder) one's changes with any file's bytes or name."""
    import hashlib

    from streetcascade.ship.build import sha256_path

    data = bytes(range(256)) * 5000  # past one 1 MiB read block
    (tmp_path / "miner.pex").write_bytes(data)
    assert sha256_path(tmp_path / "miner.pex") == hashlib.sha256(data).hexdigest()
    folder = tmp_path / "packed"
    (folder / "deps").mkdir(parents=True)
    (folder / "deps" / "a.whl").write_bytes(data)
    (folder / "__main__.py").write_text("print('hi')\n")
    first = sha256_path(folder)
    assert first == sha256_path(folder) != hashlib.sha256(data + b"print('hi')\n").hexdigest()
    (folder / "deps" / "a.whl").rename(folder / "deps" / "b.whl")
    renamed = sha256_path(folder)
    (folder / "__main__.py").write_text("print('ho')\n")
    assert len({first, renamed, sha256_path(folder)}) == 3
