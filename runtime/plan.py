"""The memory plan: what an engine set will need, from the figures its backend measured at
compile time (the manifest's per-graph `MemoryAccount`), checked against the budget before
anything is loaded.

Today every engine keeps its own activations (ONNX Runtime sessions have one arena each), so
the plan adds everything up: per graph, weights + activations at max_batch, plus host IO
buffers once per slot. On a CPU target all of it is host RAM; on a GPU target the budget is
device memory and host buffers are reported apart.
"""

from __future__ import annotations

import msgspec

from streetcascade.errors import BudgetExceeded
from streetcascade.manifest import Manifest, iter_graphs
from streetcascade.settings import RuntimeConfig

MIB = 2**20


class PlanLine(msgspec.Struct, frozen=True):
    stage: str
    role: str
    file: str
    device: str
    weights_bytes: int
    activations_bytes: int
    host_buffers_bytes: int  # all slots together

    @property
    def budget_bytes(self) -> int:
        """What this engine counts against the budget (host buffers too on a CPU device)."""
        device = self.weights_bytes + self.activations_bytes
        return device + (self.host_buffers_bytes if self.device == "cpu" else 0)


class MemoryPlan(msgspec.Struct, frozen=True):
    lines: list[PlanLine]
    slots: int
    budget_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(line.budget_bytes for line in self.lines)

    @property
    def host_buffers_bytes(self) -> int:
        return sum(line.host_buffers_bytes for line in self.lines)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.budget_bytes

    def describe(self) -> str:
        rows = [
            f"{line.stage}/{line.role}: weights {line.weights_bytes / MIB:.0f} MiB + activations {line.activations_bytes / MIB:.0f} MiB "
            f"+ host buffers {line.host_buffers_bytes / MIB:.1f} MiB ({line.device})"
            for line in self.lines
        ]
        head = f"{self.total_bytes / MIB:.0f} MiB needed for {self.slots} slot(s), budget {self.budget_bytes / MIB:.0f} MiB"
        return head + "; " + "; ".join(rows)


def plan_memory(manifest: Manifest, runtime: RuntimeConfig = RuntimeConfig()) -> MemoryPlan:
    lines = [
        PlanLine(
            stage=stage.name,
            role=graph.role,
            file=graph.file,
            device=graph.memory.device,
            weights_bytes=graph.memory.weights_bytes,
            activations_bytes=graph.memory.activations_bytes,
            host_buffers_bytes=graph.memory.host_buffers_bytes * runtime.slots,
        )
        for stage, graph in iter_graphs(manifest)
    ]
    return MemoryPlan(lines, runtime.slots, runtime.budget_bytes)


def check_budget(plan: MemoryPlan, where: str) -> None:
    if not plan.fits:
        raise BudgetExceeded(f"{where}: the engine set does not fit: {plan.describe()}")
