"""Request verification like the bittensor 9.x axon's `default_verify`, and stricter.

- The sr25519 signature (bittensor-wallet's Keypair; no crypto here) by the dendrite hotkey over
  f"{nonce}.{dendrite_hotkey}.{our_hotkey}.{uuid}.{body_hash}", with *our* hotkey and the body
  hash *we* compute for the route, never the headers' claims.
- A missing signature is refused (9.12 skips the check when the header is absent).
- Every nonce (9.x: only the first per (hotkey, uuid)) must lie within 4 s + timeout before now,
  with the timeout capped, and not too far in the future; later nonces per (hotkey, uuid) must
  strictly increase. The nonce is stored only after the signature checks out, so a forger cannot
  advance a validator's nonce and lock it out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

from bittensor_wallet import Keypair

from .errors import NotVerified
from .wire import RequestHeaders, parse_signature, signed_message

ALLOWED_DELTA_NS = 4_000_000_000  # bittensor.utils.axon_utils.ALLOWED_DELTA


class NonceStore:
    """Last accepted nonce per (dendrite hotkey, uuid), bounded; entries old enough that the
    freshness rule alone rejects their replays are dropped first."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()

    def get(self, key: tuple[str, str]) -> int | None:
        return self._last.get(key)

    def put(self, key: tuple[str, str], nonce: int, oldest_useful_ns: int) -> None:
        last = self._last
        last[key] = nonce
        last.move_to_end(key)
        # Amortised pruning from the old end: entries whose nonce is already outside the
        # freshness window can go (a replay of them is refused as stale anyway).
        while last:
            k, v = next(iter(last.items()))
            if v < oldest_useful_ns or len(last) > self.max_entries:
                last.popitem(last=False)
            else:
                break

    def __len__(self) -> int:
        return len(self._last)


class Verifier:
    """Verifies requests addressed to one of our hotkeys. Runs on the event loop (no locks)."""

    def __init__(
        self,
        our_hotkey: str,
        max_timeout_s: float = 30.0,
        max_future_s: float = 60.0,
        clock_ns: Callable[[], int] = time.time_ns,
        max_nonce_entries: int = 100_000,
    ):
        self.our_hotkey = our_hotkey
        self.max_timeout_ns = int(max_timeout_s * 1e9)
        self.max_future_ns = int(max_future_s * 1e9)
        self.clock_ns = clock_ns
        self.nonces = NonceStore(max_nonce_entries)
        self._keys: OrderedDict[str, Keypair] = OrderedDict()

    def _keypair(self, ss58: str) -> Keypair:
        kp = self._keys.get(ss58)
        if kp is None:
            try:
                kp = Keypair(ss58_address=ss58)
            except Exception as exc:  # bittensor_wallet raises ValueError on a bad SS58
                raise NotVerified(f"dendrite hotkey is not a valid SS58 address: {exc}") from None
            self._keys[ss58] = kp
            if len(self._keys) > 4096:
                self._keys.popitem(last=False)
        return kp

    def verify(self, h: RequestHeaders, expected_body_hash: str) -> None:
        """Raise NotVerified (401) unless the request is signed for us, fresh and not replayed."""
        if h.axon_hotkey and h.axon_hotkey != self.our_hotkey:
            raise NotVerified(f"request is addressed to hotkey {h.axon_hotkey[:16]}..., this axon serves {self.our_hotkey}")
        if h.computed_body_hash and h.computed_body_hash != expected_body_hash:
            raise NotVerified("computed_body_hash does not match the synapse's body hash")
        signature = parse_signature(h.dendrite_signature)
        now = self.clock_ns()
        # Capped in seconds before converting: a huge (finite) timeout header cannot overflow.
        timeout_ns = int(min(h.timeout_s or 0.0, self.max_timeout_ns / 1e9) * 1e9)
        oldest = now - ALLOWED_DELTA_NS - timeout_ns
        nonce = h.dendrite_nonce
        if nonce <= oldest:
            raise NotVerified(
                f"nonce is too old: request was {(now - nonce) / 1e9:.2f} s old, "
                f"acceptable delta is {(ALLOWED_DELTA_NS + timeout_ns) / 1e9:.2f} s"
            )
        if nonce > now + self.max_future_ns:
            raise NotVerified(f"nonce is {(nonce - now) / 1e9:.2f} s in the future")
        key = (h.dendrite_hotkey, h.dendrite_uuid)
        last = self.nonces.get(key)
        if last is not None and nonce <= last:
            raise NotVerified("nonce is too old, a newer one was last processed")
        message = signed_message(nonce, h.dendrite_hotkey, self.our_hotkey, h.dendrite_uuid, expected_body_hash)
        if not self._keypair(h.dendrite_hotkey).verify(message, signature):
            raise NotVerified("signature mismatch")
        self.nonces.put(key, nonce, now - ALLOWED_DELTA_NS - self.max_timeout_ns)
