"""Run-time settings shared by every command that runs a cascade (classify, eval, tune, serve)
and by the compiler's own engine runs (parity, calibration, the accuracy gate).

The defaults live here and only here: the cascade config's `[runtime]` table and miner.toml's
`[runtime]` table are both a `RuntimeConfig`; a stage's exit band and temperature are a
`StageThresholds` wherever they travel (config, manifest, `tune`, the runtime). Ranges are
checked by msgspec when a file is read, so an error names the field path.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

GIB = 1024**3

Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class StageThresholds(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A stage answers when p < exit_low ("no roadwork") or p > exit_high ("roadwork"); in
    between, the image goes on to the next stage. p = sigmoid(logit / temperature)."""

    exit_low: Probability = 0.15
    exit_high: Probability = 0.85
    temperature: Annotated[float, msgspec.Meta(gt=0.0, le=1000.0)] = 1.0

    def __post_init__(self):
        # msgspec turns a ValueError here into a ValidationError naming the field path.
        if self.exit_low > self.exit_high:
            raise ValueError(f"need exit_low <= exit_high, got {self.exit_low} > {self.exit_high}")

    def exits(self, probability: float) -> bool:
        return probability < self.exit_low or probability > self.exit_high


class RuntimeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Memory the engine set may use on its device (host RAM for CPU targets), checked against
    # the manifest's measured figures before anything loads (runtime/plan.py).
    budget_bytes: Annotated[int, msgspec.Meta(gt=0)] = 24 * GIB
    # Per-image deadline for classify / eval. The miner uses each request's own timeout.
    deadline_ms: Annotated[float, msgspec.Meta(gt=0.0)] = 8000.0
    # Kept free at the end of every deadline (encoding the reply, the network, latency jitter):
    # a later stage runs only if its expected time fits before deadline - margin. Applied once,
    # by the cascade.
    safety_margin_ms: Annotated[float, msgspec.Meta(ge=0.0)] = 300.0
    # Requests run at once; each gets its own engine slot (IO buffers; a stream on a GPU).
    # The miner runs this many inference threads.
    slots: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # ONNX Runtime intra-op threads per session; 0 = one per core.
    intra_op_threads: Annotated[int, msgspec.Meta(ge=0, le=512)] = 0
    # ONNX Runtime worker threads spin between ops: ~6-15% lower latency on an idle CPU, but
    # about 2x slower when other processes compete for the cores (docs/benchmarks.md). Set
    # false on a shared CPU (several miners, other services).
    spin_wait: bool = True
    # GPU backends: after the first run at a batch size, capture copy-in + execute + copy-out
    # in a CUDA graph and replay it (removes launch overhead; a failed capture falls back).
    cuda_graphs: bool = True
    # Stage 1 runs requests that arrive within this window as one batch (needs slots > 1);
    # 0 = every request alone. A GPU gains throughput from it, a 2-core CPU hardly does.
    batch_window_ms: Annotated[float, msgspec.Meta(ge=0.0, le=1000.0)] = 0.0
