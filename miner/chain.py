"""Every call into the bittensor SDK lives here, so an SDK change touches one file.

Pinned generation: bittensor 9.12.x (the validators' SDK; `async-substrate-interface==1.6.4`
next to it). The SDK is imported lazily inside these functions: the miner imports and serves
without it when the metagraph is static.

No subtensor node can be installed from the package registries we can reach, so these calls
have never run against a chain in our tests. What we rely on is written down in SDK_CONTRACT
and SDK_FIELDS below, and tests/miner/test_miner_sdk_contract.py checks every entry against a
real bittensor 9.12.2 (names, keywords, return annotations, fields), while
tests/miner/test_miner_chain.py runs this module against a stand-in with those signatures.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

from streetcascade.errors import BackendUnavailable, StreetcascadeError

from .metagraph import Neuron, Snapshot

log = logging.getLogger(__name__)

# Dotted name -> (keywords we pass, return annotation as the SDK writes it, or None).
SDK_CONTRACT: dict[str, tuple[tuple[str, ...], str | None]] = {
    "bittensor.Config": (("parser", "args"), None),
    "bittensor.Subtensor": (("network", "config"), None),
    "bittensor.Subtensor.add_args": (("parser",), None),
    "bittensor.Subtensor.metagraph": (("netuid", "lite"), "Metagraph"),
    "bittensor.Subtensor.get_neuron_for_pubkey_and_subnet": (("hotkey_ss58", "netuid"), "Optional[NeuronInfo]"),
    "bittensor.Subtensor.close": ((), None),
    "bittensor.Wallet": (("name", "hotkey", "path"), None),
    "bittensor.core.extrinsics.serving.serve_extrinsic": (("subtensor", "wallet", "ip", "port", "protocol", "netuid"), "bool"),
    "bittensor.utils.networking.get_external_ip": ((), "str"),
}
# Attributes we read from what those calls return.
SDK_FIELDS: dict[str, tuple[str, ...]] = {
    "bittensor.Metagraph": ("S", "hotkeys", "uids", "validator_permit", "block"),
    "bittensor.core.chain_data.NeuronInfo": ("uid", "hotkey", "is_null", "axon_info", "validator_permit"),
    "bittensor.core.chain_data.AxonInfo": ("ip", "port"),
}
AXON_PROTOCOL = 4  # what the 9.x Axon announces (axon.info().protocol)


class ChainError(StreetcascadeError):
    """The chain answered something we cannot use."""

    exit_code = 14


def _sdk():
    try:
        import bittensor  # noqa: PLC0415 - heavy, optional, only here
    except ImportError as exc:
        raise BackendUnavailable(
            f"the bittensor SDK is not installed ({exc}); pip install 'streetcascade[chain]' "
            "or use chain.metagraph = \"static\""
        ) from None
    return bittensor


def _subtensor(network: str, chain_endpoint: str):
    bt = _sdk()
    # With config=None the 9.x SDK parses sys.argv, and its own `--config` option would load
    # our `--config miner.toml` as a YAML file (and fail). Give it explicit arguments instead.
    parser = argparse.ArgumentParser(add_help=False)
    bt.Subtensor.add_args(parser)
    config = bt.Config(parser, args=["--no_version_checking"])
    # An endpoint URL is accepted as `network` (9.x: "local" for localhost, else "unknown").
    return bt.Subtensor(network=chain_endpoint or network, config=config)


class ChainMetagraph:
    """Reads hotkeys, stakes (metagraph.S) and validator permits of one subnet."""

    name = "chain"

    def __init__(self, netuid: int, network: str = "finney", chain_endpoint: str = ""):
        self.netuid = netuid
        self.network = network
        self.chain_endpoint = chain_endpoint
        self._subtensor = None

    def fetch(self) -> Snapshot:
        if self._subtensor is None:
            self._subtensor = _subtensor(self.network, self.chain_endpoint)
        try:
            mg = self._subtensor.metagraph(netuid=self.netuid, lite=True)
        except Exception:
            self._subtensor = None  # reconnect next time
            raise
        hotkeys = list(mg.hotkeys)
        stakes = [float(s) for s in mg.S]
        permits = [bool(p) for p in mg.validator_permit]
        uids = [int(u) for u in mg.uids]
        # 9.12 logs a failed stake query at debug level and leaves S empty: zipping that would
        # silently produce a metagraph with no validators, so refuse it (the last good one stays).
        if not (len(hotkeys) == len(stakes) == len(permits) == len(uids)):
            raise ChainError(
                f"metagraph of netuid {self.netuid} is inconsistent: {len(hotkeys)} hotkeys, {len(stakes)} stakes, "
                f"{len(permits)} permits, {len(uids)} uids"
            )
        neurons = [Neuron(hk, uid, st, vp) for hk, uid, st, vp in zip(hotkeys, uids, stakes, permits)]
        block = int(getattr(mg, "block", -1))
        return Snapshot(self.netuid, neurons, time.time(), block)


@dataclass(frozen=True)
class OnChainNeuron:
    uid: int
    hotkey: str
    axon_ip: str  # "0.0.0.0" when nothing is served
    axon_port: int
    validator_permit: bool


def neuron_on_chain(hotkey_ss58: str, netuid: int, network: str, chain_endpoint: str) -> OnChainNeuron | None:
    """The hotkey's neuron on `netuid` (uid, served axon), or None if it is not registered there."""
    subtensor = _subtensor(network, chain_endpoint)
    try:
        n = subtensor.get_neuron_for_pubkey_and_subnet(hotkey_ss58=hotkey_ss58, netuid=netuid)
    finally:
        subtensor.close()
    # 9.12 returns a "null neuron" (is_null=True), never None, for an unregistered hotkey.
    if n is None or n.is_null:
        return None
    axon = n.axon_info
    return OnChainNeuron(
        uid=int(n.uid),
        hotkey=str(n.hotkey),
        axon_ip=str(axon.ip) if axon is not None else "0.0.0.0",
        axon_port=int(axon.port) if axon is not None else 0,
        validator_permit=bool(n.validator_permit),
    )


def external_ip() -> str:
    """This machine's public IP as the SDK detects it (asks public IP-echo services)."""
    return str(_sdk().utils.networking.get_external_ip())


def serve_axon(wallet_name: str, wallet_hotkey: str, wallet_path: str, netuid: int, network: str,
               chain_endpoint: str, external_ip_: str, external_port: int) -> bool:
    """Announce (ip, port) for the wallet's hotkey on chain (the 9.x serve_axon extrinsic).

    Calls the SDK's `serve_extrinsic` directly rather than building an `Axon` (which would parse
    our argv, build a FastAPI app and look up the IP on the internet even when it is given).
    The SDK skips the extrinsic when the chain already holds the same (ip, port)."""
    bt = _sdk()
    from bittensor.core.extrinsics.serving import serve_extrinsic  # noqa: PLC0415

    wallet = bt.Wallet(name=wallet_name, hotkey=wallet_hotkey, path=wallet_path)
    ip = external_ip_ or external_ip()
    subtensor = _subtensor(network, chain_endpoint)
    try:
        log.info("serving %s:%d for hotkey %s on netuid %d", ip, external_port, wallet.hotkey.ss58_address, netuid)
        return bool(serve_extrinsic(subtensor=subtensor, wallet=wallet, ip=ip, port=external_port, protocol=AXON_PROTOCOL, netuid=netuid))
    finally:
        subtensor.close()
