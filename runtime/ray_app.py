"""The Ray Serve application of an engine set: each cascade stage a deployment.

- `StageReplica` (one deployment per stage, named `stage-<name>`): each replica loads its own
  stage from the engine set with the normal loader (manifest, target and hashes checked, the
  stage's memory planned against the replica's share of the budget: runtime/ray_plan.py), and
  scores images on `slots` threads. A batched stage (stage 1 by default) gathers concurrent calls
  with `serve.batch` (max_batch_size, batch_wait_timeout_s from `[ray.stages.<name>]`) and runs
  them as one engine batch.
- `CascadeInfo` (the ingress, no CPU reserved): describes the application to the miner
  (runtime/ray_stage.py): the stages in order, as their replicas loaded them.

The cascade logic (exits, deadline, fallbacks) stays in the miner's process: it calls the stage
deployments directly, so a request costs one Ray round trip per stage it reaches. Every node that
runs a replica needs this package installed (the same version) and the engine set at the same
path; the loader's hash check refuses a copy that differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import msgspec
import numpy as np
from ray import serve

from streetcascade.errors import BadInput, InferenceError, StreetcascadeError
from streetcascade.evidence import LogOddsRule
from streetcascade.manifest import read_manifest
from streetcascade.settings import StageThresholds

from .load import load_engine_set
from .ray_plan import RayConfig, ReplicaPlan, checked_plans
from .ray_stage import PROTOCOL, connect_ray, describe_app, error_from_deploy_message, first_line

log = logging.getLogger(__name__)

# Retries of a replica whose constructor failed: a wrong engine set or budget does not fix itself,
# so a deploy fails in seconds with the replica's message instead of retrying for minutes.
CONSTRUCTOR_RETRIES = 2


def _count_images(items: list) -> int:
    return sum(len(images) for images, _ in items)


@serve.deployment
class StageReplica:
    def __init__(self, engine_dir: str, plan: ReplicaPlan, thresholds: dict[str, StageThresholds] | None, rules: dict[str, LogOddsRule] | None):
        t0 = time.perf_counter()
        self.plan = plan
        self.engine_set = load_engine_set(engine_dir, plan.runtime, thresholds, rules=rules, only_stages=[plan.stage])
        self.stage = self.engine_set.cascade.stages[0]
        self.evidence = callable(getattr(self.stage, "score_given", None))
        # The engines run here, off the replica's event loop, one thread per slot (each thread gets
        # its own engine slot); a batched stage runs one batch at a time.
        self._pool = ThreadPoolExecutor(max_workers=plan.runtime.slots, thread_name_prefix=f"stage-{plan.stage}")
        if plan.batched:
            self._batched.set_max_batch_size(plan.max_batch_size)
            self._batched.set_batch_wait_timeout_s(plan.batch_wait_timeout_s)
        self.load_seconds = time.perf_counter() - t0
        self.calls = self.batches = self.largest_batch = 0
        log.info("replica of stage %s loaded in %.2f s: %s", plan.stage, self.load_seconds, self.engine_set.plan.describe())

    def describe(self) -> dict:
        entry = self.engine_set.manifest.stages[0]
        return {
            "name": self.plan.stage,
            "kind": self.plan.kind,
            "deployment": self.plan.deployment,
            "evidence": self.evidence,
            "thresholds": msgspec.to_builtins(self.stage.thresholds),
            "expected_ms": float(self.stage.expected_ms),
            "input_size": entry.input_size,
            "placeholder_weights": entry.placeholder_weights,
            "batched": self.plan.batched,
            "max_batch_size": self.plan.max_batch_size,
            "replica_memory_bytes": self.engine_set.plan.total_bytes,
            "replica_budget_bytes": self.engine_set.plan.budget_bytes,
        }

    def stats(self) -> dict:
        """This replica's calls, engine batches of gathered calls, and the largest such batch."""
        return {"calls": self.calls, "batches": self.batches, "largest_batch": self.largest_batch, "load_seconds": self.load_seconds}

    async def score(self, images: Sequence[np.ndarray], priors: Sequence[float] | None = None) -> tuple[list[float], list[str] | None]:
        """Probabilities (and, for an evidence stage given priors, the text read) for `images`."""
        self.calls += 1
        if priors is not None and len(priors) != len(images):
            raise BadInput(f"stage {self.plan.stage}: {len(priors)} priors for {len(images)} images")
        if self.plan.batched and 0 < len(images) <= self.plan.max_batch_size:
            return await self._batched((list(images), None if priors is None else list(priors)))
        return await self._run(list(images), priors)

    @serve.batch(batch_size_fn=_count_images)
    async def _batched(self, items: list[tuple[list[np.ndarray], list[float] | None]]) -> list[tuple[list[float], list[str] | None]]:
        # Priors are all given or all absent: one stage is always called the same way by the cascade.
        images = [img for imgs, _ in items for img in imgs]
        given = all(p is not None for _, p in items)
        priors = [p for _, ps in items for p in ps] if given else None
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(images))
        probs, texts = await self._run(images, priors)
        out, start = [], 0
        for imgs, _ in items:
            end = start + len(imgs)
            out.append((probs[start:end], None if texts is None else texts[start:end]))
            start = end
        return out

    async def _run(self, images: list[np.ndarray], priors: Sequence[float] | None) -> tuple[list[float], list[str] | None]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._score_now, images, priors)

    def _score_now(self, images: list[np.ndarray], priors: Sequence[float] | None) -> tuple[list[float], list[str] | None]:
        texts = None
        if priors is not None and self.evidence:
            scores, texts = self.stage.score_given(images, list(priors))
        else:
            scores = self.stage.score(images)
            if isinstance(scores, tuple):
                scores, texts = scores
        return [float(p) for p in np.asarray(scores, dtype=np.float64)], None if texts is None else list(texts)

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
        engine_set = getattr(self, "engine_set", None)
        if engine_set is not None:
            engine_set.close()


@serve.deployment(ray_actor_options={"num_cpus": 0})
class CascadeInfo:
    def __init__(self, info: dict, *stages):
        self.info = info
        self.stages = stages  # DeploymentHandles of the StageReplica deployments, in cascade order

    async def describe(self) -> dict:
        stages = [await handle.describe.remote() for handle in self.stages]
        return {**self.info, "protocol": PROTOCOL, "stages": stages,
                "placeholder_stages": [s["name"] for s in stages if s.get("placeholder_weights")]}


def build_application(engine_dir: str | Path, plans: list[ReplicaPlan], thresholds: dict[str, StageThresholds] | None = None,
                      rules: dict[str, LogOddsRule] | None = None):
    """The Serve application (ingress + one deployment per stage); `serve run` / `serve.run` it."""
    engine_dir = str(Path(engine_dir).resolve())
    manifest = read_manifest(engine_dir)
    info = {"engine_dir": engine_dir, "target": manifest.target.name, "built_at": manifest.built_at, "config_sha256": manifest.config_sha256}
    stages = [
        StageReplica.options(
            name=p.deployment,
            num_replicas=p.replicas,
            ray_actor_options={"num_cpus": p.num_cpus, "num_gpus": p.num_gpus},
            max_ongoing_requests=p.max_ongoing_requests,
            max_constructor_retry_count=CONSTRUCTOR_RETRIES,
        ).bind(engine_dir, p, thresholds, rules)
        for p in plans
    ]
    return CascadeInfo.options(name="cascade").bind(info, *stages)


def deploy(engine_dir: str | Path, ray_cfg: RayConfig, runtime, address: str, thresholds: dict[str, StageThresholds] | None = None,
           rules: dict[str, LogOddsRule] | None = None, where: str = "miner.toml") -> dict:
    """Plan, check every replica's budget, then deploy (or update) the application on the cluster at
    `address` and wait until every replica has loaded; returns the application's description.
    A replica that fails to load fails the deploy with its own error (our tree), and the half-made
    application is deleted."""
    plans = checked_plans(read_manifest(engine_dir), ray_cfg, runtime, where)
    app = build_application(engine_dir, plans, thresholds, rules)
    connect_ray(address, ray_cfg.connect_timeout_s)
    # No HTTP proxy: the miner calls the deployments through handles (applies when this starts Serve).
    serve.start(proxy_location="Disabled")
    try:
        serve.run(app, name=ray_cfg.app_name, route_prefix=None)
    except Exception as exc:
        raise _deploy_error(ray_cfg.app_name, exc) from None
    return describe_app(ray_cfg.app_name, ray_cfg.connect_timeout_s)


def _deploy_error(app_name: str, exc: Exception) -> StreetcascadeError:
    """The first failed deployment's message as our error; the failed application is removed."""
    err: StreetcascadeError | None = None
    try:
        status = serve.status().applications.get(app_name)
        for name, dep in (status.deployments if status else {}).items():
            if str(dep.status).endswith("DEPLOY_FAILED") or str(dep.status).endswith("UNHEALTHY"):
                err = error_from_deploy_message(dep.message, f"Ray Serve deployment {name} of application {app_name!r}")
                break
        serve.delete(app_name)
    except Exception as cleanup:  # the deploy error matters more; say what the cleanup hit
        log.warning("could not read or delete the failed application %r: %s", app_name, first_line(cleanup))
    if err is None:
        err = InferenceError(f"deploying Ray Serve application {app_name!r} failed: {first_line(exc)}")
    return err


def delete(app_name: str, address: str, timeout_s: float) -> None:
    connect_ray(address, timeout_s)
    serve.delete(app_name)


__all__ = ["StageReplica", "CascadeInfo", "build_application", "deploy", "delete"]
