"""A stand-in `bittensor` package with the 9.12.2 signatures that miner/chain.py uses
(chain.SDK_CONTRACT, checked against the real SDK in test_miner_sdk_contract.py). It records
every call in `CALLS` and serves a small in-memory chain."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field


@dataclass
class AxonInfo:
    ip: str = "0.0.0.0"
    port: int = 0


@dataclass
class NeuronInfo:
    uid: int = 0
    hotkey: str = ""
    validator_permit: bool = False
    axon_info: AxonInfo | None = None
    is_null: bool = False


@dataclass
class FakeChain:
    hotkeys: list[str] = field(default_factory=list)
    stakes: list[float] = field(default_factory=list)
    permits: list[bool] = field(default_factory=list)
    axons: dict[str, AxonInfo] = field(default_factory=dict)
    block: int = 100
    external_ip: str = "198.51.100.7"
    calls: list[tuple] = field(default_factory=list)
    broken_stakes: bool = False


def install(monkeypatch, chain: FakeChain) -> FakeChain:
    class Config(dict):
        def __init__(self, parser=None, args=None, strict=False, default=None):
            super().__init__()
            chain.calls.append(("Config", tuple(args or ())))
            assert args, "an empty args list makes the real SDK read sys.argv"
            ns, _ = parser.parse_known_args(args)
            self.update(vars(ns))

    class Metagraph:
        def __init__(self):
            self.hotkeys = list(chain.hotkeys)
            self.S = [] if chain.broken_stakes else list(chain.stakes)
            self.validator_permit = list(chain.permits)
            self.uids = list(range(len(chain.hotkeys)))
            self.block = chain.block

    class Subtensor:
        @staticmethod
        def add_args(parser, prefix=None):
            parser.add_argument("--subtensor.network", default="finney")
            parser.add_argument("--no_version_checking", action="store_true")

        def __init__(self, network=None, config=None):
            assert isinstance(config, Config), "pass an explicit config (the default one parses argv)"
            chain.calls.append(("Subtensor", network))
            self.network = network
            self.closed = False

        def metagraph(self, netuid, lite=True, block=None, mechid=0):
            chain.calls.append(("metagraph", netuid, lite))
            return Metagraph()

        def get_neuron_for_pubkey_and_subnet(self, hotkey_ss58, netuid, block=None):
            chain.calls.append(("neuron", hotkey_ss58, netuid))
            if hotkey_ss58 not in chain.hotkeys:
                return NeuronInfo(is_null=True)
            uid = chain.hotkeys.index(hotkey_ss58)
            return NeuronInfo(uid=uid, hotkey=hotkey_ss58, validator_permit=chain.permits[uid], axon_info=chain.axons.get(hotkey_ss58, AxonInfo()))

        def close(self):
            self.closed = True

    class _Key:
        def __init__(self, ss58):
            self.ss58_address = ss58

    class Wallet:
        def __init__(self, name=None, hotkey=None, path=None, config=None):
            self.name, self.hotkey_str, self.path = name, hotkey, path
            self.hotkey = _Key(f"hk-{name}-{hotkey}")
            self.coldkeypub = _Key(f"ck-{name}")

    def serve_extrinsic(subtensor, wallet, ip, port, protocol, netuid, placeholder1=0, placeholder2=0,
                        wait_for_inclusion=False, wait_for_finalization=True, certificate=None, period=None) -> bool:
        chain.calls.append(("serve", wallet.hotkey.ss58_address, ip, port, protocol, netuid))
        if wallet.hotkey.ss58_address not in chain.hotkeys:
            return False  # the chain refuses an unregistered hotkey
        chain.axons[wallet.hotkey.ss58_address] = AxonInfo(ip, port)
        return True

    def get_external_ip() -> str:
        chain.calls.append(("external_ip",))
        return chain.external_ip

    bt = types.ModuleType("bittensor")
    bt.Config, bt.Subtensor, bt.Wallet, bt.Metagraph = Config, Subtensor, Wallet, Metagraph
    core = types.ModuleType("bittensor.core")
    extrinsics = types.ModuleType("bittensor.core.extrinsics")
    serving = types.ModuleType("bittensor.core.extrinsics.serving")
    serving.serve_extrinsic = serve_extrinsic
    utils = types.ModuleType("bittensor.utils")
    networking = types.ModuleType("bittensor.utils.networking")
    networking.get_external_ip = get_external_ip
    bt.core, core.extrinsics, extrinsics.serving, bt.utils, utils.networking = core, extrinsics, serving, utils, networking
    for name, mod in {"bittensor": bt, "bittensor.core": core, "bittensor.core.extrinsics": extrinsics,
                      "bittensor.core.extrinsics.serving": serving, "bittensor.utils": utils, "bittensor.utils.networking": networking}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return chain
