"""Who may call us: hotkeys, stakes and validator permits, behind a small interface.

`MetagraphSource.fetch()` (blocking) returns a `Snapshot`; `FixedMetagraph` serves a fixed table
(tests, offline benchmarks), `streetcascade.miner.chain.ChainMetagraph` reads the chain through
the bittensor SDK. `MetagraphView` holds the last good snapshot, refreshes it in the background
and keeps serving the last good copy when a refresh fails (optionally persisted to disk, so a
restart during a chain outage still knows the validators).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Protocol

import msgspec

log = logging.getLogger(__name__)


class Neuron(msgspec.Struct, frozen=True):
    hotkey: str
    uid: int
    stake: float  # metagraph.S (stake weight, TAO-equivalent)
    validator_permit: bool


class Snapshot(msgspec.Struct, frozen=True):
    netuid: int
    neurons: list[Neuron]
    fetched_at: float  # unix seconds
    block: int = -1

    def index(self) -> dict[str, Neuron]:
        return {n.hotkey: n for n in self.neurons}


class MetagraphSource(Protocol):
    name: str

    def fetch(self) -> Snapshot: ...


class FixedMetagraph:
    """A fixed list of Neurons (`[[chain.static_neurons]]`, tests, offline benchmarks)."""

    name = "static"

    def __init__(self, neurons: list[Neuron], netuid: int = 72):
        self.neurons = list(neurons)
        self.netuid = netuid

    def fetch(self) -> Snapshot:
        return Snapshot(self.netuid, list(self.neurons), time.time())


class MetagraphView:
    """The current snapshot as a dict, swapped atomically on refresh (readers never lock)."""

    def __init__(self, source: MetagraphSource, refresh_s: float = 300.0, snapshot_path: str = ""):
        self.source = source
        self.refresh_s = refresh_s
        self.snapshot_path = snapshot_path
        self.snapshot: Snapshot | None = None
        self.by_hotkey: dict[str, Neuron] = {}
        self.last_error: str = ""
        self.failures = 0
        self.refreshes = 0

    @property
    def ready(self) -> bool:
        return self.snapshot is not None

    @property
    def age_s(self) -> float:
        return time.time() - self.snapshot.fetched_at if self.snapshot else float("inf")

    def get(self, hotkey: str) -> Neuron | None:
        return self.by_hotkey.get(hotkey)

    def install(self, snap: Snapshot) -> None:
        self.by_hotkey = snap.index()
        self.snapshot = snap

    def refresh_once(self) -> bool:
        """Fetch (blocking); keep the last good copy on failure. Returns True on success."""
        try:
            snap = self.source.fetch()
        except Exception as exc:  # the chain being unreachable must never stop serving
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "metagraph refresh from %s failed (%s); keeping the copy from %.0f s ago",
                self.source.name, self.last_error, self.age_s,
            )
            if self.snapshot is None:
                self._load_saved()
            return False
        self.install(snap)
        self.refreshes += 1
        self.last_error = ""
        log.info("metagraph: %d neurons, %d with validator permit", len(snap.neurons), sum(n.validator_permit for n in snap.neurons))
        self._save(snap)
        return True

    def _save(self, snap: Snapshot) -> None:
        if not self.snapshot_path:
            return
        try:
            tmp = self.snapshot_path + ".tmp"
            Path(tmp).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp).write_bytes(msgspec.json.encode(snap))
            os.replace(tmp, self.snapshot_path)
        except OSError as exc:
            log.warning("could not save the metagraph snapshot to %s: %s", self.snapshot_path, exc)

    def _load_saved(self) -> None:
        if not self.snapshot_path or not Path(self.snapshot_path).exists():
            return
        try:
            snap = msgspec.json.decode(Path(self.snapshot_path).read_bytes(), type=Snapshot)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("could not read the saved metagraph %s: %s", self.snapshot_path, exc)
            return
        self.install(snap)
        log.warning("using the saved metagraph from %s (%.0f s old)", self.snapshot_path, self.age_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every `refresh_s` (sooner after a failure) until `stop` is set."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            delay = self.refresh_s if self.snapshot is not None and not self.last_error else min(30.0, self.refresh_s)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return
            except asyncio.TimeoutError:
                pass
            await loop.run_in_executor(None, self.refresh_once)
