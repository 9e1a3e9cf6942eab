"""`streetcascade register`: announce each hotkey's axon (external IP, port) on chain.

Validators find miners through the IP/port stored on chain for the hotkey (the 9.x
`subtensor.serve_axon` extrinsic). Run it once per hotkey after `btcli subnet register`, and
again whenever the public IP or port changes. The SDK call itself lives in `chain.py`.
"""

from __future__ import annotations

import logging

from .config import MinerConfig
from .errors import WalletError

log = logging.getLogger(__name__)


def register_all(cfg: MinerConfig, dry_run: bool = False, only_port: int = 0) -> int:
    from .chain import serve_axon

    failures = 0
    for h in cfg.hotkeys:
        if only_port and h.port != only_port:
            continue
        if not h.wallet_name:
            raise WalletError(f"hotkey on port {h.port}: register needs wallet_name + wallet_hotkey (the SDK signs with the wallet)")
        port = h.external_port or h.port
        where = f"{h.external_ip or '<detected external ip>'}:{port}"
        if dry_run:
            print(f"would serve_axon netuid={cfg.chain.netuid} network={cfg.chain.chain_endpoint or cfg.chain.network} "
                  f"wallet={h.wallet_name}/{h.wallet_hotkey} at {where}")
            continue
        ok = serve_axon(h.wallet_name, h.wallet_hotkey, h.wallet_path, cfg.chain.netuid, cfg.chain.network,
                        cfg.chain.chain_endpoint, h.external_ip, port)
        print(f"{'ok' if ok else 'FAILED'}: {h.wallet_name}/{h.wallet_hotkey} at {where}")
        failures += 0 if ok else 1
    return 1 if failures else 0
