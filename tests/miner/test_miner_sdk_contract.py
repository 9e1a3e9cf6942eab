"""What miner/chain.py relies on in the bittensor SDK, checked against a real 9.12.2.

No subtensor node can be installed from the package registries reachable here (searched: PyPI,
npm, Debian, crates.io), so ChainMetagraph, `register` and doctor's chain checks never talk to
a chain in tests. Instead every SDK name, keyword, return annotation and field they use is
declared in chain.SDK_CONTRACT / SDK_FIELDS and checked here inside a venv with the validators'
SDK (bench/btvenv.py, cached; needs PyPI the first time).
"""

import json
import subprocess
from pathlib import Path

import pytest

from bench.btvenv import VenvError, ensure_bt_venv

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]


def test_chain_module_matches_bittensor_9_12_2():
    try:
        python = ensure_bt_venv("9.12.2")
    except (VenvError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"NOT CHECKED against bittensor 9.12.2: its venv cannot be built from PyPI: {str(exc)[:300]}")
    out = subprocess.run(
        [str(python), str(Path(__file__).with_name("bt_sdk_contract.py")), str(ROOT / "miner" / "chain.py")],
        capture_output=True, text=True, timeout=180, cwd="/",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bittensor"] == "9.12.2"
    assert result["problems"] == []
