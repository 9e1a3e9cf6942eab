import base64
import io

import numpy as np
import pytest
from bittensor_wallet import Keypair
from PIL import Image
from streetcascade.miner.config import EdgeConfig, LimitsConfig, PolicyConfig
from streetcascade.miner.metagraph import MetagraphView
from streetcascade.miner.server import AxonSpec, MinerServer
from streetcascade.miner.state import MinerState
from streetcascade.runtime import Cascade, ClassifierStage
from streetcascade.runtime.backends.fake import FakeEngine
from support import fixed_metagraph


@pytest.fixture(scope="session")
def keys():
    return {
        "validator": Keypair.create_from_uri("//Alice"),
        "validator2": Keypair.create_from_uri("//Charlie"),
        "miner": Keypair.create_from_uri("//Bob"),
        "miner2": Keypair.create_from_uri("//Dave"),
        "poor": Keypair.create_from_uri("//Eve"),
        "nopermit": Keypair.create_from_uri("//Ferdie"),
        "stranger": Keypair.create_from_uri("//Stranger"),
    }


@pytest.fixture(scope="session")
def table(keys):
    return {
        keys["validator"].ss58_address: (50_000.0, True),
        keys["validator2"].ss58_address: (2_000.0, True),
        keys["poor"].ss58_address: (10.0, True),
        keys["nopermit"].ss58_address: (90_000.0, False),
    }


def jpeg_bytes(value: int = 200, size: int = 224, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    img = Image.fromarray(np.full((size, size, 3), value, np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def image_b64():
    return base64.b64encode(jpeg_bytes()).decode()


def make_server(keys, table, stages=None, policy=None, limits=None, hotkeys=("miner",), threads=1, safety_margin_ms=0.0, metrics_port=0, edge=None):
    cascade = Cascade(stages or [ClassifierStage("stage1", FakeEngine(), 224)], safety_margin_ms=safety_margin_ms)
    state = MinerState(cascade, MetagraphView(fixed_metagraph(table)), policy or PolicyConfig(), limits or LimitsConfig(), slots=threads)
    axons = [AxonSpec(keys[h].ss58_address, 0) for h in hotkeys]
    return MinerServer(state, axons, host="127.0.0.1", metrics_port=metrics_port, graceful_shutdown_s=5, edge=edge or EdgeConfig()).start_in_thread()


@pytest.fixture
def server(keys, table):
    srv = make_server(keys, table)
    yield srv
    srv.stop()


@pytest.fixture
def server_factory(keys, table):
    made = []

    def factory(**kw):
        srv = make_server(keys, kw.pop("table", table), **kw)
        made.append(srv)
        return srv

    yield factory
    for srv in made:
        srv.stop()


@pytest.fixture(scope="session")
def jpeg():
    return jpeg_bytes
