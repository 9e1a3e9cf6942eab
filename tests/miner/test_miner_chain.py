"""miner/chain.py against a stand-in SDK with the 9.12.2 signatures (tests/fake_bittensor.py)."""

import sys

import pytest
from streetcascade.miner import chain as chain_mod
from streetcascade.miner.chain import ChainError, ChainMetagraph, neuron_on_chain, serve_axon

from fake_bittensor import AxonInfo, FakeChain, install


@pytest.fixture
def fake(monkeypatch):
    # What `streetcascade serve --config miner.toml` puts in argv: the SDK must never see it.
    monkeypatch.setattr(sys, "argv", ["streetcascade", "serve", "--config", "miner.toml"])
    return install(monkeypatch, FakeChain(hotkeys=["v1", "hk-miner-default"], stakes=[50_000.0, 3.0], permits=[True, False]))


def test_metagraph_snapshot(fake):
    snap = ChainMetagraph(72, "finney").fetch()
    assert ("metagraph", 72, True) in fake.calls and ("Subtensor", "finney") in fake.calls
    assert ("Config", ("--no_version_checking",)) in fake.calls
    v1 = snap.index()["v1"]
    assert v1.stake == 50_000.0 and v1.validator_permit and snap.block == 100


def test_endpoint_wins_over_network(fake):
    ChainMetagraph(323, "test", "ws://127.0.0.1:9944").fetch()
    assert ("Subtensor", "ws://127.0.0.1:9944") in fake.calls


def test_inconsistent_metagraph_is_refused(fake):
    fake.broken_stakes = True  # 9.12 leaves S empty when its stake query fails
    with pytest.raises(ChainError, match="inconsistent"):
        ChainMetagraph(72).fetch()


def test_neuron_on_chain(fake):
    fake.axons["v1"] = AxonInfo("203.0.113.9", 8091)
    n = neuron_on_chain("v1", 72, "finney", "")
    assert (n.uid, n.axon_ip, n.axon_port, n.validator_permit) == (0, "203.0.113.9", 8091, True)
    assert neuron_on_chain("nobody", 72, "finney", "") is None  # the SDK's null neuron


def test_serve_axon_with_and_without_ip(fake):
    assert serve_axon("miner", "default", "/w", 72, "finney", "", "203.0.113.5", 8091)
    assert fake.axons["hk-miner-default"] == AxonInfo("203.0.113.5", 8091)
    assert ("external_ip",) not in fake.calls  # given: never looked up
    assert serve_axon("miner", "default", "/w", 72, "finney", "", "", 8092)
    assert ("external_ip",) in fake.calls and fake.axons["hk-miner-default"] == AxonInfo("198.51.100.7", 8092)
    assert not serve_axon("other", "x", "/w", 72, "finney", "", "203.0.113.5", 8091)  # not registered


def test_sdk_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bittensor", None)
    from streetcascade.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="streetcascade\\[chain\\]"):
        chain_mod._sdk()
