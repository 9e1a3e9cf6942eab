"""The backend interface: an Engine (loaded once, shared, immutable) hands out Slots
(one per concurrent request / stream) that run inference.

Two phases: `Backend.load` may be slow and fail loudly; `Slot.infer` is the hot path and
must not allocate what it can reuse.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from streetcascade.manifest import TensorSpec  # noqa: F401  (re-exported: part of the backend interface)


class Slot(Protocol):
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class Engine(Protocol):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def slot(self) -> Slot: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def load(self, path: str, inputs: list[TensorSpec], outputs: list[TensorSpec], options: dict) -> Engine: ...
