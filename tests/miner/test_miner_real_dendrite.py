"""Real bittensor clients (9.12.2, the validators' SDK, and 10.x) query our axon on 127.0.0.1.

The SDKs live in throw-away venvs built once from PyPI and cached under
${STREETCASCADE_CACHE:-~/.cache/streetcascade}/ (bench/btvenv.py; ~30-70 s each the
first time). Their external-IP lookup is patched in tests/miner/bt_dendrite_query.py.
"""

import json
import subprocess
from pathlib import Path

import pytest

from bench.btvenv import VenvError, ensure_bt_venv

SCRIPT = Path(__file__).with_name("bt_dendrite_query.py")

# They pip-install bittensor from PyPI (once, cached): deselect with -m "not network".
pytestmark = pytest.mark.network


@pytest.fixture(scope="session", params=["9.12.2", "10.5.0"])
def bt_python(request):
    try:
        return request.param, ensure_bt_venv(request.param)
    except (VenvError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"NOT CHECKED against a real bittensor {request.param} client: its venv cannot be built from PyPI "
                    f"(unreachable?): {str(exc)[:300]}")


@pytest.mark.parametrize("route", ["ImageSynapse", "ExtendedImageSynapse"])
def test_real_dendrite_reads_prediction(bt_python, route, server, keys, jpeg, tmp_path):
    version, python = bt_python
    img = tmp_path / "img.jpg"
    img.write_bytes(jpeg(230))
    out = subprocess.run(
        [str(python), str(SCRIPT), "--port", str(server.ports[0]), "--axon-hotkey", keys["miner"].ss58_address,
         "--uri", "//Alice", "--image", str(img), "--route", route, "--repeat", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["bittensor"] == version
    for r in res["results"]:
        assert r["status_code"] == 200 and r["is_success"] is True, r
        assert 0.9 < r["prediction"] <= 1.0 and r["deserialized"] == r["prediction"]
        assert r["axon_process_time"] is not None and r["axon_process_time"] < 1.0


def test_real_dendrite_sees_blacklist_status(bt_python, server, keys, jpeg, tmp_path):
    _, python = bt_python
    img = tmp_path / "img.jpg"
    img.write_bytes(jpeg(230))
    out = subprocess.run(
        [str(python), str(SCRIPT), "--port", str(server.ports[0]), "--axon-hotkey", keys["miner"].ss58_address,
         "--uri", "//Stranger", "--image", str(img)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])["results"][0]
    assert r["status_code"] == 403 and "not registered" in r["status_message"] and r["prediction"] == -1.0
