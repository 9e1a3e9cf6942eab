"""What a Ray Serve application of an engine set looks like, decided before Ray is touched:
the `[ray]` table (per stage: replicas, CPU and GPU share, requests in flight, batching, memory
budget per replica) checked against the engine set's manifest, and each replica's memory plan
checked against its share of the budget.

The budget per replica: a stage's `budget_bytes` when set; otherwise, on a GPU engine set, the
`[runtime]` budget times the replica's GPU fraction (a replica with `num_gpus = 0.25` may use a
quarter of the 24 GB planned per GPU), and on a CPU engine set the whole `[runtime]` budget.
Each replica is its own process, so a GPU replica also pays its own CUDA context (counted by
runtime/plan.py). No `ray` import here: `streetcascade ray-deploy --dry-run` and the tests of
this table run without Ray installed. The application itself: runtime/ray_app.py.
"""

from __future__ import annotations

import importlib
import math
from typing import Annotated

import msgspec

from streetcascade.errors import BackendUnavailable, BudgetExceeded, ConfigError
from streetcascade.manifest import Manifest
from streetcascade.settings import RuntimeConfig

from .plan import GIB, MIB, MemoryPlan, plan_memory


class RayStageConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`[ray.stages.<stage name>]`: how one cascade stage runs as a Ray Serve deployment."""

    replicas: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    # Ray resources reserved per replica. A replica uses at most one GPU (our backends run on one
    # device); a fraction lets several replicas (of this or other stages) share a GPU.
    num_cpus: Annotated[float, msgspec.Meta(ge=0.0, le=1024.0)] = 1.0
    num_gpus: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    # Requests a replica holds at once (Ray queues the rest in the caller's router).
    max_ongoing_requests: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 16
    # Engine slots per replica: requests that run at once inside it, each with its own IO buffers
    # (counted in the replica's memory plan). A batched stage runs one batch at a time.
    slots: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # serve.batch: calls that arrive within batch_wait_timeout_s run as one engine batch of up to
    # max_batch_size images. 0 = the first stage batches up to its engine's max_batch, later
    # stages do not batch; 1 = no batching.
    max_batch_size: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 0
    batch_wait_timeout_s: Annotated[float, msgspec.Meta(ge=0.0, le=10.0)] = 0.005
    # Memory one replica may use (0 = derived: see the module docstring).
    budget_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0


class RayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`[ray]` in miner.toml: the Ray Serve application (`streetcascade ray-deploy`) and how the
    miner reaches it (`[engine] ray_address` chooses Ray over a local engine set)."""

    app_name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")] = "streetcascade"
    # Connecting to the cluster and reading the application's description; a refused or silent
    # address fails after this long with BackendUnavailable.
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0.0, le=600.0)] = 15.0
    # The longest one stage call may take when the cascade has no deadline (the miner always has
    # one: each request's timeout); a call past it is DeadlineExceeded, never a hung thread.
    call_timeout_s: Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)] = 30.0
    # Per stage, by the engine set's stage name; a stage not listed gets the defaults.
    stages: dict[str, RayStageConfig] = {}

    @staticmethod
    def check_raw(raw: object, source: str) -> None:
        """Check each raw `[ray.stages.<name>]` table first, so that an error names the stage
        (msgspec reports a dict value's path as `stages[...]`)."""
        stages = raw.get("stages") if isinstance(raw, dict) else None
        for name, table in stages.items() if isinstance(stages, dict) else ():
            try:
                msgspec.convert(table, RayStageConfig)
            except msgspec.ValidationError as exc:
                text, at, path = str(exc).partition(" - at `$")
                raise ConfigError(f"{source}: {text} - at `$.ray.stages.{name}{path if at else '`'}") from None


class ReplicaPlan(msgspec.Struct, frozen=True):
    """One stage's deployment, resolved against the engine set: what ray_app.py deploys."""

    stage: str
    kind: str
    deployment: str  # the Ray Serve deployment name inside the application
    replicas: int
    num_cpus: float
    num_gpus: float
    max_ongoing_requests: int
    max_batch_size: int  # 1 = not batched
    batch_wait_timeout_s: float
    runtime: RuntimeConfig  # what each replica loads with: its budget, slots, threads
    memory: MemoryPlan  # one replica's plan against runtime.budget_bytes
    budget_note: str

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 1


def deployment_name(stage: str) -> str:
    return f"stage-{stage}"


def plan_replicas(manifest: Manifest, ray: RayConfig, runtime: RuntimeConfig = RuntimeConfig(), where: str = "miner.toml") -> list[ReplicaPlan]:
    """Resolve `[ray]` against the engine set; a setting that cannot work is a ConfigError naming
    its field (`ray.stages.<name>.<field>`). Budgets are not checked here: `check_replica_budgets`."""
    names = [s.name for s in manifest.stages]
    unknown = sorted(set(ray.stages) - set(names))
    if unknown:
        raise ConfigError(f"{where}: ray.stages.{unknown[0]}: the engine set has no stage {unknown[0]!r}; its stages: {', '.join(names)}")
    gpu = manifest.target.device == "cuda"
    plans = []
    for index, entry in enumerate(manifest.stages):
        cfg = ray.stages.get(entry.name, RayStageConfig())
        field = f"{where}: ray.stages.{entry.name}"
        if gpu and cfg.num_gpus <= 0:
            raise ConfigError(f"{field}.num_gpus: the engine set runs on a GPU ({manifest.target.gpu_name or 'cuda'}); "
                              "give each replica a GPU share, e.g. 0.25 for a quarter of one GPU")
        max_batch = cfg.max_batch_size or (entry.graphs[0].io.max_batch if index == 0 else 1)
        if max_batch > 1 and cfg.max_ongoing_requests < max_batch:
            raise ConfigError(f"{field}.max_ongoing_requests ({cfg.max_ongoing_requests}) is below max_batch_size ({max_batch}): "
                              "a replica would never hold a full batch; raise it or lower max_batch_size")
        if cfg.budget_bytes:
            budget, note = cfg.budget_bytes, f"ray.stages.{entry.name}.budget_bytes"
        elif gpu:
            budget = int(runtime.budget_bytes * cfg.num_gpus)
            note = f"{cfg.num_gpus:g} of the [runtime] budget of {runtime.budget_bytes / GIB:.2f} GiB per GPU"
        else:
            budget, note = runtime.budget_bytes, "the [runtime] budget (CPU engine set: host RAM per replica)"
        threads = runtime.intra_op_threads or max(1, math.ceil(cfg.num_cpus))  # 0: as many as the CPUs reserved
        replica_runtime = msgspec.structs.replace(runtime, budget_bytes=max(budget, 1), slots=1 if max_batch > 1 else cfg.slots,
                                                  intra_op_threads=threads, batch_window_ms=0.0)
        memory = plan_memory(msgspec.structs.replace(manifest, stages=[entry]), replica_runtime)
        plans.append(ReplicaPlan(entry.name, entry.kind, deployment_name(entry.name), cfg.replicas, cfg.num_cpus, cfg.num_gpus,
                                 cfg.max_ongoing_requests, max_batch, cfg.batch_wait_timeout_s, replica_runtime, memory, note))
    return plans


def check_replica_budgets(plans: list[ReplicaPlan], where: str) -> None:
    """Refuse, before deploying anything, a replica whose measured memory exceeds its share."""
    for p in plans:
        if not p.memory.fits:
            raise BudgetExceeded(f"{where}: a replica of stage {p.stage} does not fit its budget ({p.budget_note}); raise "
                                 f"ray.stages.{p.stage}.num_gpus or budget_bytes:\n{p.memory.table()}")


def checked_plans(manifest: Manifest, ray: RayConfig, runtime: RuntimeConfig, where: str = "miner.toml") -> list[ReplicaPlan]:
    """`plan_replicas`, then `check_replica_budgets`: the plan ray-deploy prints and deploys."""
    plans = plan_replicas(manifest, ray, runtime, where)
    check_replica_budgets(plans, where)
    return plans


def describe_replicas(plans: list[ReplicaPlan]) -> str:
    """The application as a table: resources and memory per replica against its budget."""
    out = [f"{'stage':<16} {'deployment':<20} {'replicas':>8} {'cpus':>5} {'gpus':>5} {'batch':>10} {'slots':>5} "
           f"{'MiB/replica':>11} {'budget MiB':>10}  fits"]
    for p in plans:
        batch = f"{p.max_batch_size}/{p.batch_wait_timeout_s * 1000:g}ms" if p.batched else "-"
        out.append(f"{p.stage[:16]:<16} {p.deployment[:20]:<20} {p.replicas:>8} {p.num_cpus:>5g} {p.num_gpus:>5g} {batch:>10} "
                   f"{p.runtime.slots:>5} {p.memory.total_bytes / MIB:>11.0f} {p.memory.budget_bytes / MIB:>10.0f}  "
                   + ("yes" if p.memory.fits else "NO"))
    cpus = sum(p.replicas * p.num_cpus for p in plans)
    gpus = sum(p.replicas * p.num_gpus for p in plans)
    out.append(f"reserved on the cluster: {cpus:g} CPU(s), {gpus:g} GPU(s) in {sum(p.replicas for p in plans)} replica(s)")
    return "\n".join(out)


def ray_module(name: str):
    """`ray_stage` (the miner's side) or `ray_app` (the application), imported on first use; without
    Ray installed, BackendUnavailable saying how to install it."""
    try:
        return importlib.import_module(f"streetcascade.runtime.{name}")
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "ray":
            raise
        raise BackendUnavailable(f"Ray Serve is not installed here ({exc}): pip install -c constraints-cpu.txt "
                                 "'streetcascade[ray]' on the miner and on every Ray node") from None
