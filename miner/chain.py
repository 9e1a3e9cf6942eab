"""Every call into the bittensor SDK lives here, so an SDK change touches one file.

Pinned generation: bittensor 9.12.x (the validators' SDK; `async-substrate-interface==1.6.4`
next to it). The SDK is imported lazily inside these functions: the miner imports and serves
without it when the metagraph is static.
"""

from __future__ import annotations

import logging
import time

from streetcascade.errors import BackendUnavailable

from .metagraph import Neuron, Snapshot

log = logging.getLogger(__name__)


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
    # 9.x: bt.subtensor / bt.Subtensor(network=...); an endpoint URL is accepted as `network`.
    return bt.Subtensor(network=chain_endpoint or network)


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
        stakes = [float(s) for s in mg.S]
        permits = [bool(p) for p in mg.validator_permit]
        uids = [int(u) for u in mg.uids]
        neurons = [Neuron(hk, uid, st, vp) for hk, uid, st, vp in zip(mg.hotkeys, uids, stakes, permits)]
        block = int(getattr(mg, "block", -1))
        return Snapshot(self.netuid, neurons, time.time(), block)


def serve_axon(wallet_name: str, wallet_hotkey: str, wallet_path: str, netuid: int, network: str,
               chain_endpoint: str, external_ip: str, external_port: int) -> bool:
    """Announce (ip, port) for the wallet's hotkey on chain (the 9.x `subtensor.serve_axon`).

    The Axon object is only the SDK's carrier for (wallet, ip, port): it is never started."""
    bt = _sdk()
    wallet = bt.Wallet(name=wallet_name, hotkey=wallet_hotkey, path=wallet_path)
    subtensor = _subtensor(network, chain_endpoint)
    axon = bt.Axon(wallet=wallet, port=external_port, external_ip=external_ip or None, external_port=external_port)
    log.info("serving %s:%d for hotkey %s on netuid %d", axon.external_ip, external_port, wallet.hotkey.ss58_address, netuid)
    return bool(subtensor.serve_axon(netuid=netuid, axon=axon))
