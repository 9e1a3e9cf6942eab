"""Loading our hotkeys (bittensor-wallet). Only public addresses are ever logged."""

from __future__ import annotations

import os

from bittensor_wallet import Keyfile, Keypair, Wallet

from .config import HotkeyConfig
from .errors import WalletError


def load_hotkey(cfg: HotkeyConfig) -> Keypair:
    try:
        if cfg.hotkey_file:
            if not os.path.exists(cfg.hotkey_file):
                raise WalletError(f"hotkey_file {cfg.hotkey_file} does not exist")
            return Keyfile(cfg.hotkey_file).keypair
        wallet = Wallet(name=cfg.wallet_name, hotkey=cfg.wallet_hotkey, path=cfg.wallet_path)
        return wallet.hotkey
    except WalletError:
        raise
    except Exception as exc:  # KeyFileError, decryption, bad JSON: message has no secret material
        where = cfg.hotkey_file or f"wallet {cfg.wallet_name}/{cfg.wallet_hotkey} under {cfg.wallet_path}"
        raise WalletError(f"cannot load the hotkey from {where}: {type(exc).__name__}: {str(exc)[:200]}") from None
