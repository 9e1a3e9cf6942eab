"""A fake backend for tests and server benchmarks: deterministic output, no model weights.

The "model" maps an NHWC uint8 batch to a logit per image: (mean pixel - 127.5) / 32, so
bright images say "roadwork" and dark ones "no roadwork". `latency_ms` simulates work.

It has the shape every backend has (this file + compile/targets/fake.py + a registry line
each): `streetcascade compile` with `[target] backend = "fake"` writes a small JSON engine file
that `load_engine_set` loads through this class, like any other engine. Tests also build a
`FakeEngine` directly.
"""

from __future__ import annotations

import time

import msgspec
import numpy as np

from streetcascade.errors import EngineMismatch
from streetcascade.manifest import GraphIO, MemoryAccount
from streetcascade.settings import RuntimeConfig

from ..classifier import classifier_io
from .base import Backend, Engine, Slot, host_bytes

ENGINE_KIND = "streetcascade-fake-engine"


class FakeEngineFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What compile/targets/fake.py writes."""

    kind: str
    latency_ms: float = 0.0


class FakeOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class FakeSlot(Slot):
    engine: "FakeEngine"

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        engine = self.engine
        engine.calls += 1
        if engine.latency_ms:
            time.sleep(engine.latency_ms / 1000.0)
        if engine.fail_with is not None:
            raise engine.fail_with
        self.check_feeds(feeds)
        x = feeds[engine.io.inputs[0].name]
        logits = (x.reshape(x.shape[0], -1).mean(axis=1, dtype=np.float32) - 127.5) / 32.0
        if engine.emit_nan:
            logits = np.full_like(logits, np.nan)
        return {engine.io.outputs[0].name: logits.astype(np.float32)}


class FakeEngine(Engine):
    def __init__(self, input_size: int = 224, latency_ms: float = 0.0, emit_nan: bool = False, fail_with: Exception | None = None,
                 max_batch: int = 32, io: GraphIO | None = None, path: str = "<fake>"):
        super().__init__(path, io or classifier_io(input_size, max_batch))
        self.latency_ms = latency_ms
        self.emit_nan = emit_nan
        self.fail_with = fail_with
        self.calls = 0

    def slot(self) -> FakeSlot:
        return FakeSlot(self)

    def memory(self) -> MemoryAccount:
        return MemoryAccount("cpu", 0, 0, host_bytes(self.io.outputs, self.io.max_batch), method="fake")


class FakeBackend(Backend):
    name = "fake"
    Options = FakeOptions

    @classmethod
    def options_for(cls, runtime: RuntimeConfig, device: str) -> FakeOptions:
        return FakeOptions()

    def load(self, path: str, io: GraphIO, options: FakeOptions) -> FakeEngine:
        try:
            spec = msgspec.json.decode(open(path, "rb").read(), type=FakeEngineFile)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EngineMismatch(f"{path}: not a fake engine file: {exc}") from None
        if spec.kind != ENGINE_KIND:
            raise EngineMismatch(f"{path}: kind {spec.kind!r}, expected {ENGINE_KIND!r}")
        return FakeEngine(latency_ms=spec.latency_ms, io=io, path=path)
