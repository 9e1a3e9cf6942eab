"""deploy/: the PM2 process file and the systemd unit parse, and start what they should."""

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_systemd_unit_verifies(tmp_path):
    text = (DEPLOY / "streetcascade-miner.service").read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(text)
    service = unit["Service"]
    assert service["ExecStart"].split()[1:3] == ["serve", "--config"]
    assert int(service["LimitNOFILE"]) >= 65536 and service["Restart"] == "always"
    assert int(service["TimeoutStopSec"]) > 15  # longer than graceful_shutdown_s
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed: only parsed with configparser")
    # verify refuses a missing executable and an unknown user: point both at this machine.
    exe = Path(sys.executable).with_name("streetcascade")
    local = text.replace("/opt/streetcascade/.venv/bin/streetcascade", str(exe if exe.exists() else sys.executable))
    local = local.replace("User=miner", "User=root")
    path = tmp_path / "streetcascade-miner.service"
    path.write_text(local)
    out = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    # It reports unknown keys and bad values on stderr with exit status 0.
    problems = [line for line in out.stderr.splitlines() if "streetcascade-miner.service" in line]
    assert out.returncode == 0 and not problems, out.stderr


def test_pm2_ecosystem_file():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed: the PM2 file cannot be checked")
    path = DEPLOY / "ecosystem.config.js"
    subprocess.run([node, "--check", str(path)], check=True, timeout=60)
    out = subprocess.run([node, "-e", f"console.log(JSON.stringify(require({json.dumps(str(path))})))"],
                         capture_output=True, text=True, check=True, timeout=60)
    app = json.loads(out.stdout)["apps"][0]
    assert app["script"] == ".venv/bin/streetcascade" and app["interpreter"] == "none"
    assert app["args"][:2] == ["serve", "--config"] and app["kill_timeout"] > 15000
    assert Path(app["cwd"]).resolve() == DEPLOY.parent
