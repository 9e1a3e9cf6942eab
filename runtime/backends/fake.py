"""A fake backend for tests and server benchmarks: no model file, deterministic output.

The "model" maps an NHWC uint8 batch to a logit per image: (mean pixel - 127.5) / 32, so
bright images say "roadwork" and dark ones "no roadwork". `latency_ms` simulates work.
"""

from __future__ import annotations

import time

import numpy as np

from .base import TensorSpec


class FakeSlot:
    def __init__(self, engine: "FakeEngine"):
        self._engine = engine

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        engine = self._engine
        engine.calls += 1
        if engine.latency_ms:
            time.sleep(engine.latency_ms / 1000.0)
        if engine.fail_with is not None:
            raise engine.fail_with
        x = feeds[engine.inputs[0].name]
        logits = (x.reshape(x.shape[0], -1).mean(axis=1, dtype=np.float32) - 127.5) / 32.0
        if engine.emit_nan:
            logits = np.full_like(logits, np.nan)
        return {engine.outputs[0].name: logits.astype(np.float32)}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakeEngine:
    def __init__(self, input_size: int = 224, latency_ms: float = 0.0, emit_nan: bool = False, fail_with: Exception | None = None):
        self.inputs = [TensorSpec("pixels", ["batch", input_size, input_size, 3], "uint8")]
        self.outputs = [TensorSpec("logit", ["batch"], "float32")]
        self.latency_ms = latency_ms
        self.emit_nan = emit_nan
        self.fail_with = fail_with
        self.calls = 0

    def slot(self) -> FakeSlot:
        return FakeSlot(self)

    def close(self) -> None:
        pass


class FakeBackend:
    name = "fake"

    def load(self, path: str, inputs: list[TensorSpec], outputs: list[TensorSpec], options: dict) -> FakeEngine:
        size = int(inputs[0].shape[1]) if inputs else 224
        return FakeEngine(input_size=size, latency_ms=float(options.get("latency_ms", 0.0)))
