"""The memory plan: what an engine set will need, checked against the budget before anything
is loaded; or, before anything is built, what a cascade config would need (`plan_from_config`,
from model sizes and precisions: streetcascade/sizing.py).

What is counted (all bytes):
- per engine: weights, and its own activations (ONNX Runtime sessions keep one arena each);
- scratch that GPU engines take from the shared arena (TensorRT's USER_MANAGED context memory):
  engines run one after another, so the largest is counted once per slot, not per engine;
- KV caches of decoder stages (estimates);
- host IO buffers, once per slot (pinned on a GPU, where they are host memory, reported apart);
- the CUDA context, once per process on a GPU.
On a CPU target everything is host RAM and counts against the budget; on a GPU the budget is
device memory, and `load_engine_set` never plans above the device's free memory.
"""

from __future__ import annotations

import msgspec

from streetcascade.errors import BudgetExceeded
from streetcascade.manifest import Manifest, iter_graphs
from streetcascade.settings import RuntimeConfig

MIB = 2**20
GIB = 2**30


class PlanLine(msgspec.Struct, frozen=True):
    stage: str
    role: str
    file: str  # the engine file, or the model's source for an estimate
    device: str
    weights_bytes: int
    activations_bytes: int  # this engine's own (not shared)
    host_buffers_bytes: int  # all slots together
    shared_scratch_bytes: int = 0  # taken from the per-slot arena shared with the other engines
    kv_bytes: int = 0
    note: str = ""  # what the figures were measured at (a VLM: image tokens per resolution)

    @property
    def budget_bytes(self) -> int:
        """What this engine alone counts against the budget (its share of the arena excluded)."""
        device = self.weights_bytes + self.activations_bytes + self.kv_bytes
        return device + (self.host_buffers_bytes if self.device == "cpu" else 0)


class MemoryPlan(msgspec.Struct, frozen=True):
    lines: list[PlanLine]
    slots: int
    budget_bytes: int
    context_bytes: int = 0  # the CUDA context on a GPU
    budget_note: str = ""  # why the budget is what it is (e.g. limited by free device memory)
    source: str = "manifest"  # "manifest" (measured at compile time) or "estimate"

    @property
    def arena_bytes(self) -> int:
        return max((line.shared_scratch_bytes for line in self.lines), default=0) * self.slots

    @property
    def total_bytes(self) -> int:
        return sum(line.budget_bytes for line in self.lines) + self.arena_bytes + self.context_bytes

    @property
    def host_buffers_bytes(self) -> int:
        return sum(line.host_buffers_bytes for line in self.lines)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.budget_bytes

    def describe(self) -> str:
        rows = [
            f"{line.stage}/{line.role}: weights {line.weights_bytes / MIB:.0f} MiB + activations {line.activations_bytes / MIB:.0f} MiB "
            + (f"+ scratch {line.shared_scratch_bytes / MIB:.0f} MiB (shared) " if line.shared_scratch_bytes else "")
            + (f"+ KV {line.kv_bytes / MIB:.0f} MiB " if line.kv_bytes else "")
            + f"+ host buffers {line.host_buffers_bytes / MIB:.1f} MiB ({line.device}" + (f"; {line.note})" if line.note else ")")
            for line in self.lines
        ]
        extra = []
        if self.arena_bytes:
            extra.append(f"shared scratch arena {self.arena_bytes / MIB:.0f} MiB ({self.slots} slot(s) x the largest)")
        if self.context_bytes:
            extra.append(f"CUDA context {self.context_bytes / MIB:.0f} MiB")
        head = f"{self.total_bytes / MIB:.0f} MiB needed for {self.slots} slot(s), budget {self.budget_bytes / MIB:.0f} MiB"
        return head + "; " + "; ".join(rows + extra)

    def table(self) -> str:
        """The plan as an aligned table (the `plan` command, and BudgetExceeded messages)."""
        unit, scale = ("GiB", GIB) if max(self.total_bytes, self.budget_bytes) >= 4 * GIB else ("MiB", MIB)

        def gib(n: int) -> str:
            return f"{n / scale:8.2f}"

        def size(n: int) -> str:
            return f"{n / scale:.2f} {unit}"

        out = [f"{'stage/part':<28} {'device':<6} {'weights':>8} {'activ.':>8} {'scratch':>8} {'KV':>8} {'host':>8}   {unit}"]
        for line in self.lines:
            out.append(f"{(line.stage + '/' + line.role)[:28]:<28} {line.device:<6} {gib(line.weights_bytes)} {gib(line.activations_bytes)} "
                       f"{gib(line.shared_scratch_bytes)} {gib(line.kv_bytes)} {gib(line.host_buffers_bytes)}" + (f"   {line.note}" if line.note else ""))
        if self.arena_bytes:
            out.append(f"{'shared scratch arena':<28} {'':<6} {'':>8} {'':>8} {gib(self.arena_bytes)}   ({self.slots} slot(s) x the largest)")
        if self.context_bytes:
            out.append(f"{'CUDA context':<28} {'':<6} {gib(self.context_bytes)}")
        where = "device memory" if any(line.device == "cuda" for line in self.lines) else "memory"
        verdict = "fits" if self.fits else "DOES NOT FIT"
        out.append(f"total {size(self.total_bytes)} of {where} for {self.slots} slot(s) ({self.source}), budget {size(self.budget_bytes)}"
                   + (f" ({self.budget_note})" if self.budget_note else "") + f": {verdict}")
        host = self.host_buffers_bytes
        if host and all(line.device == "cuda" for line in self.lines):
            out.append(f"pinned host buffers {host / MIB:.1f} MiB (host RAM, not in the budget)")
        return "\n".join(out)


def plan_memory(manifest: Manifest, runtime: RuntimeConfig = RuntimeConfig()) -> MemoryPlan:
    from streetcascade.sizing import CUDA_CONTEXT_BYTES

    lines = []
    for stage, graph in iter_graphs(manifest):
        m = graph.memory
        shared = graph.build.device_memory_bytes if (graph.build is not None and m.method == "tensorrt-engine") else 0
        lines.append(PlanLine(
            stage=stage.name,
            role=graph.role,
            file=graph.file,
            device=m.device,
            weights_bytes=m.weights_bytes,
            activations_bytes=max(0, m.activations_bytes - shared),
            host_buffers_bytes=m.host_buffers_bytes * runtime.slots,
            shared_scratch_bytes=shared,
            note=_measured_at(stage, graph),
        ))
    context = CUDA_CONTEXT_BYTES if manifest.target.device == "cuda" else 0
    return MemoryPlan(lines, runtime.slots, runtime.budget_bytes, context)


def _measured_at(stage, graph) -> str:
    """A VLM's figures depend on the image's token count: say which it was measured for."""
    v = stage.vlm
    if v is None:
        return ""
    if graph.role == "vision":
        side = v.image_side or stage.input_size
        return f"{v.vision_tokens} image tokens at {side}x{side}, measured at up to {graph.io.axis_sizes.get('tokens', v.vision_tokens)}"
    return f"prompt + image up to {graph.io.axis_sizes.get('sequence', v.max_tokens)} tokens, batch {graph.io.max_batch}"


def plan_from_config(config, runtime: RuntimeConfig | None = None) -> MemoryPlan:
    """Estimate the plan of a cascade config before building it (streetcascade/sizing.py)."""
    from streetcascade.sizing import CUDA_CONTEXT_BYTES, estimate_stage

    runtime = runtime or config.runtime
    device = config.target.device
    gpu = device == "cuda"
    lines = []
    for stage in config.stages:
        e = estimate_stage(stage.name, stage.source, stage.family, stage.precision, stage.max_batch, stage.input_size, stage.max_tokens)
        lines.append(PlanLine(
            note=e.note,
            stage=stage.name,
            role=stage.family,
            file=stage.source,
            device=device,
            weights_bytes=e.weights_bytes,
            # On a GPU the scratch comes from the shared arena; a CPU runtime keeps one per engine.
            activations_bytes=0 if gpu else e.scratch_bytes,
            host_buffers_bytes=e.host_bytes * runtime.slots,
            shared_scratch_bytes=e.scratch_bytes if gpu else 0,
            kv_bytes=e.kv_bytes,
        ))
    return MemoryPlan(lines, runtime.slots, runtime.budget_bytes, CUDA_CONTEXT_BYTES if gpu else 0, source="estimate")


def limit_to_free_device_memory(plan: MemoryPlan, free_bytes: int) -> MemoryPlan:
    """Never plan above what the GPU has free now (other processes, other miners)."""
    if 0 < free_bytes < plan.budget_bytes:
        return msgspec.structs.replace(plan, budget_bytes=free_bytes, budget_note=f"limited to the GPU's free memory; the configured budget is {plan.budget_bytes / GIB:.2f} GiB")
    return plan


def check_budget(plan: MemoryPlan, where: str) -> None:
    if not plan.fits:
        raise BudgetExceeded(f"{where}: the engine set does not fit:\n{plan.table()}")
