"""The Dockerfile's steps, run here on the CPU without a container engine, and the one-file
artifact they produce, run the way an operator runs it.

build-engines.sh compiles a tiny engine set; package.sh packs it with a miner config into the
artifact. Copied alone into an empty folder and started by a Python with nothing installed (a
fresh venv without even pip), with no checkout on any path, a throw-away HOME and proxies and
package indexes pointing nowhere, the artifact answers a real bittensor 9.12.2 dendrite and its
`health` (the image's HEALTHCHECK) says ok; every module it imported came from its own unpacked
copy. install-artifact.sh installs it as the runtime stage does; runtime-setup.sh creates the
image's user in a scratch root. A changed config, in the unpacked copy or in the zip, is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from support import REPO

from bench.ship import (STOP_TIMEOUT_S, VALIDATOR_URI, bare_python, free_port, isolated_env, miner_toml, start_and_time, stop, write_wallet)

SCRIPTS = REPO / "deploy" / "docker"
BIN = Path(sys.executable).parent


def script_env(**extra) -> dict[str, str]:
    return {**os.environ, "STREETCASCADE": str(BIN / "streetcascade"), "PYTHON": sys.executable, "PYTHONPATH": "", **extra}


def run_script(name: str, *args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(["sh", str(SCRIPTS / name), *args], env=env or script_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{name} exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, tiny_config):
    """build-engines.sh + package.sh, as the Dockerfile runs them; a miner config with a static
    metagraph (the validator //Alice) and the miner's hotkey //Bob in a wallet outside it."""
    from bittensor_wallet import Keypair

    root = tmp_path_factory.mktemp("ship")
    engines = root / "engines"
    run_script("build-engines.sh", env=script_env(CASCADE_CONFIG=str(tiny_config), GPU_TYPE="cpu", TARGET="onnxruntime", OUT=str(engines)))
    port, mport = free_port(), free_port()
    home = root / "home"
    miner = write_wallet(home / ".bittensor" / "wallets")
    config = root / "miner.toml"
    config.write_text(miner_toml(port, mport, "~/.bittensor/wallets", Keypair.create_from_uri(VALIDATOR_URI).ss58_address))
    artifact = root / "out" / "miner-cpu.pex"
    packed = run_script("package.sh", env=script_env(ENGINES=str(engines), MINER_CONFIG=str(config), OUT=str(artifact)))
    assert "verified    config, manifest and 1 engine file(s)" in packed.stdout
    return {"root": root, "artifact": artifact, "port": port, "metrics_port": mport, "home": home, "miner": miner,
            "bare": bare_python(root / "bare")}


def fresh_run(shipped, name: str) -> tuple[Path, dict]:
    """An empty folder holding only the artifact, and the isolated environment to run it in."""
    run = shipped["root"] / name
    run.mkdir()
    shutil.copy(shipped["artifact"], run)
    home = shipped["root"] / f"home-{name}"
    shutil.copytree(shipped["home"], home)
    return run, isolated_env(home, shipped["bare"])


def artifact(shipped, run: Path, env: dict, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(shipped["bare"]), "-I", shipped["artifact"].name, *args], cwd=run, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.network  # the bittensor 9.12.2 venv (built once from PyPI, cached); the artifact needs no network
def test_the_artifact_answers_a_real_dendrite_from_a_bare_python(shipped, tmp_path):
    from bench.btvenv import VenvError, ensure_bt_venv

    try:
        bt_python = ensure_bt_venv("9.12.2")
    except (VenvError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"NOT CHECKED against a real bittensor 9.12.2 dendrite: its venv cannot be built from PyPI: {str(exc)[:300]}")
    run, env = fresh_run(shipped, "run-dendrite")
    bare = shipped["bare"]
    assert sorted(p.name for p in bare.parent.parent.joinpath("lib").glob("python3*/site-packages/*")) == []  # nothing installed
    seconds, proc, first = start_and_time([str(bare), "-I", shipped["artifact"].name, "serve", "--state-dir", "state"], env, run,
                                          shipped["port"], shipped["miner"])
    try:
        assert 0.0 <= first["prediction"] <= 1.0
        img = tmp_path / "img.jpg"
        from PIL import Image
        import numpy as np

        Image.fromarray(np.full((224, 224, 3), 230, np.uint8)).save(img)
        out = subprocess.run([str(bt_python), str(REPO / "tests" / "miner" / "bt_dendrite_query.py"), "--port", str(shipped["port"]),
                              "--axon-hotkey", shipped["miner"], "--uri", VALIDATOR_URI, "--image", str(img), "--repeat", "2"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["bittensor"] == "9.12.2"
        for r in res["results"]:
            assert r["status_code"] == 200 and r["is_success"] is True, r
            assert 0.0 <= r["prediction"] <= 1.0 and r["deserialized"] == r["prediction"]
        # The serving process itself (pex re-executes in place): every shared library it mapped
        # is the bare Python's, the system's, or from the artifact's unpacked copy.
        maps = Path(f"/proc/{proc.pid}/maps")
        if maps.exists():
            libs = {line.split()[-1] for line in maps.read_text().splitlines() if ".so" in line.split()[-1]}
            assert any("onnxruntime" in lib for lib in libs)
            assert not [lib for lib in libs if lib.startswith((str(REPO), sys.prefix))], libs
        health = artifact(shipped, run, env, "health", timeout=60)
        assert health.returncode == 0 and json.loads(health.stdout)["status"] == "ok", health.stderr
        info = artifact(shipped, run, env, "info", "--json", timeout=120)
        assert info.returncode == 0, info.stderr
    finally:
        assert stop(proc, STOP_TIMEOUT_S) == 0, proc.stderr.read().decode()[-2000:]
    print(f"\nartifact {shipped['artifact'].stat().st_size / 2**20:.1f} MiB; cold start to the first answer {seconds:.2f} s")
    # Imported from its own unpacked copy and the bare Python's standard library, nothing else.
    facts = json.loads(info.stdout)
    pex_root = Path(env["HOME"]).resolve() / ".cache" / "pex"
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    foreign = {m: f for m, f in facts["modules"].items()
               if not (Path(f).resolve().is_relative_to(pex_root) or Path(f).resolve().is_relative_to(stdlib))}
    assert foreign == {}, foreign
    assert not any(str(REPO) in f or sys.prefix in f for f in facts["modules"].values())
    assert facts["modules"]["streetcascade.miner.server"].startswith(str(pex_root)) and "onnxruntime" in facts["modules"]
    names = {d.split("==")[0].lower() for d in facts["distributions"]}
    assert "onnxruntime" in names and not names & {"torch", "transformers", "onnx", "pytest", "streetcascade"}
    # Runtime state went to the state dir; the folder holds nothing else.
    assert sorted(p.name for p in run.iterdir()) == [shipped["artifact"].name, "state"]
    assert "listening on 127.0.0.1" in (run / "state" / "logs" / "miner.log").read_text()


@pytest.mark.slow
def test_a_changed_config_in_the_unpacked_copy_is_refused(shipped):
    run, env = fresh_run(shipped, "run-tamper-unpacked")
    info = artifact(shipped, run, env, "info", "--json")
    assert info.returncode == 0, info.stderr
    config = Path(json.loads(info.stdout)["root"]) / "miner.toml"
    config.write_text(config.read_text().replace("stake = 5000.0", "stake = 1.0"))
    for command in (["info"], ["serve", "--state-dir", "state"]):
        out = artifact(shipped, run, env, *command)
        assert out.returncode == 5 and "changed afterwards" in out.stderr and "miner.toml" in out.stderr, out.stderr


@pytest.mark.slow
def test_a_changed_config_in_the_zip_is_refused(shipped):
    run, env = fresh_run(shipped, "run-tamper-zip")
    path = run / shipped["artifact"].name
    data = path.read_bytes()
    start = data.find(b"PK\x03\x04")  # the shebang before the zip
    with zipfile.ZipFile(path) as src:
        items = [(i, src.read(i.filename)) for i in src.infolist()]
    tmp = run / "rezipped.zip"
    with zipfile.ZipFile(tmp, "w") as dst:
        for item, body in items:
            if item.filename == "streetcascade_bundle/miner.toml":
                body = body.replace(b"stake = 5000.0", b"stake = 1.0")
            item.compress_type = zipfile.ZIP_STORED  # quicker to write; pex reads either
            dst.writestr(item, body)
    path.write_bytes(data[:start] + tmp.read_bytes())
    tmp.unlink()
    out = artifact(shipped, run, env, "info")
    assert out.returncode == 5 and "changed afterwards" in out.stderr, out.stderr


@pytest.mark.slow
def test_installed_as_the_runtime_image_does_it_serves_and_reports_health(shipped):
    """install-artifact.sh (the runtime stage), with the bare Python; then the image's CMD and
    HEALTHCHECK: `pex serve` and `pex health` (1 before the server is up, 0 while it serves)."""
    run, env = fresh_run(shipped, "run-installed")
    dest = run / "opt"
    run_script("install-artifact.sh", str(run / shipped["artifact"].name), str(dest), env={**env, "PYTHON": str(shipped["bare"])})
    health = [str(dest / "pex"), "health"]
    down = subprocess.run(health, env=env, cwd=run, capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "/health" in down.stderr
    env = {**env, "STREETCASCADE_STATE_DIR": str(run / "state")}
    _, proc, first = start_and_time([str(dest / "pex"), "serve"], env, run, shipped["port"], shipped["miner"])
    try:
        assert 0.0 <= first["prediction"] <= 1.0
        up = subprocess.run(health, env=env, cwd=run, capture_output=True, text=True, timeout=60)
        assert up.returncode == 0 and json.loads(up.stdout)["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert (run / "state" / "logs" / "miner.log").exists() and not (Path(env["HOME"]) / ".cache" / "pex").exists()


def test_runtime_setup_creates_the_unprivileged_user(tmp_path):
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd (it writes a scratch /etc through useradd --prefix)")
    root = tmp_path / "root"
    (root / "etc" / "default").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc" / "gshadow").write_text("root:*::\n")
    for name in ("login.defs",):
        if Path("/etc", name).exists():
            shutil.copy(Path("/etc", name), root / "etc" / name)
    run_script("runtime-setup.sh", env={**os.environ, "ROOT": str(root)})
    assert "miner:x:10001:10001::/home/miner:/usr/sbin/nologin" in (root / "etc" / "passwd").read_text()
    state = root / "var" / "lib" / "streetcascade"
    assert state.is_dir() and state.stat().st_uid == 10001 and oct(state.stat().st_mode & 0o777) == "0o750"
    wallets = root / "home" / "miner" / ".bittensor" / "wallets"
    assert wallets.is_dir() and oct(wallets.stat().st_mode & 0o777) == "0o700"


def test_build_engines_refuses_a_gpu_type_it_cannot_build(tmp_path, tiny_config):
    """GPU_TYPE=sm89 on a machine without that GPU: the build step fails, never CPU engines
    under a GPU image's name."""
    out = subprocess.run(["sh", str(SCRIPTS / "build-engines.sh")], env=script_env(CASCADE_CONFIG=str(tiny_config), GPU_TYPE="sm89",
                         OUT=str(tmp_path / "engines")), capture_output=True, text=True, timeout=600)
    from streetcascade.gpu import probe_gpus

    if probe_gpus():
        pytest.skip("a GPU is present: compile-engines would build for it")
    assert out.returncode != 0 and not (tmp_path / "engines" / "manifest.json").exists()
    assert "GPU" in out.stderr or "CUDA" in out.stderr, out.stderr[-2000:]
