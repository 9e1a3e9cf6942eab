"""The miner's side of Ray Serve: a `Cascade` whose stages are Ray Serve deployments.

`connect_cascade(address, ray)` joins the Ray cluster, reads the application's description
(its stages in order, their thresholds and input size, as the replicas loaded them) and returns
the same `Cascade` the local runtime builds, with a `RemoteStage` per stage. The cascade's own
logic is unchanged: stage 1 always runs, a later stage runs only if its expected time (here the
measured round trip, starting from the replica's prior) fits before deadline - safety margin,
and a skipped or failed later stage leaves the earlier answer standing, logged and counted. A
remote stage bounds its wait by the time the cascade has left (`takes_time_left`), and every
failure of a Ray call becomes an error of our tree: a timeout DeadlineExceeded, Serve's back
pressure Overloaded, an error of ours raised in a replica that same error, anything else
InferenceError. The miner sees Decisions, as from a local engine set.

Ray is imported here and in runtime/ray_app.py only, and only when `[engine] ray_address` is set.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence
from urllib.parse import urlsplit

import msgspec
import numpy as np
import ray
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import BackPressureError, RayServeException

from streetcascade import errors
from streetcascade.errors import BackendUnavailable, DeadlineExceeded, InferenceError, Overloaded, StreetcascadeError
from streetcascade.settings import RuntimeConfig, StageThresholds

from .cascade import Cascade
from .ray_plan import RayConfig
from .stages import LatencyTracker

log = logging.getLogger(__name__)

# The description format the application speaks (runtime/ray_app.py CascadeInfo.describe).
PROTOCOL = 1


def _probe(address: str, timeout_s: float) -> None:
    """A refused or silent host:port fails here in `timeout_s`: ray.init would retry a dead GCS
    address for minutes. "auto" / "local" / "" are left to Ray (it fails fast without a cluster)."""
    if address in ("", "auto", "local"):
        return
    split = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = split.hostname, split.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise BackendUnavailable(f"ray_address {address!r}: expected \"auto\", \"HOST:PORT\" (the head's GCS port, 6379) or "
                                 "\"ray://HOST:PORT\" (Ray Client, 10001)")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise BackendUnavailable(f"Ray cluster at {address} is not reachable ({exc}); start it (`ray start --head`) "
                                 "or fix [engine] ray_address") from None


def connect_ray(address: str, timeout_s: float) -> bool:
    """Join the cluster at `address` (unless this process already has); True when this call
    started the connection (and so `ray.shutdown()` belongs to the caller)."""
    _probe(address, timeout_s)
    if ray.is_initialized():
        return False
    try:
        # The miner's own log stays ours: replicas log on their nodes (ray logs / the dashboard).
        ray.init(address=address or "auto", logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RayError, RuntimeError, ValueError) as exc:
        raise BackendUnavailable(f"cannot join the Ray cluster at {address or 'auto'}: {first_line(exc)}") from None
    return True


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text.startswith("Traceback") else (text.splitlines() or [type(exc).__name__])[0]


def error_from_replica(exc: BaseException, what: str) -> StreetcascadeError:
    """A failed Ray call as an error of our tree, with the replica's own message when it raised one
    of ours (a BadInput stays a 400, an EngineMismatch names the file)."""
    if isinstance(exc, TimeoutError):  # DeploymentResponse.result(timeout_s=...) and GetTimeoutError
        return DeadlineExceeded(f"{what}: no answer from Ray Serve in time")
    if isinstance(exc, BackPressureError):
        return Overloaded(f"{what}: Ray Serve refused the call (queue full): {first_line(exc)}")
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, StreetcascadeError):
            return type(cause)(f"{what} (on Ray Serve): {cause}")
        return InferenceError(f"{what} failed on Ray Serve: {type(cause).__name__ if cause else 'error'}: {first_line(cause or exc)}")
    if isinstance(exc, StreetcascadeError):
        return exc
    return InferenceError(f"{what}: Ray Serve call failed: {type(exc).__name__}: {first_line(exc)}")


def error_from_deploy_message(message: str, what: str) -> StreetcascadeError:
    """A deployment's status message (a replica's traceback) as an error of our tree: its last
    line is `ClassName: text`; one of ours keeps its class."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no message from Ray Serve"
    name, _, text = last.partition(": ")
    cls = getattr(errors, name.rsplit(".", 1)[-1], None)
    if isinstance(cls, type) and issubclass(cls, StreetcascadeError) and text:
        return cls(f"{what}: {text}")
    return InferenceError(f"{what}: {last}")


class RemoteStage:
    """A cascade stage served by a Ray Serve deployment (one of runtime/ray_app.py's StageReplica)."""

    takes_time_left = True

    def __init__(self, name: str, handle, thresholds: StageThresholds, prior_ms: float, call_timeout_s: float, input_size: int | None = None):
        self.name = name
        self.handle = handle
        self.thresholds = thresholds
        self.input_size = input_size  # the miner decodes JPEGs straight to about this size (MinerState.draft_size)
        self.call_timeout_s = call_timeout_s
        self.latency = LatencyTracker(prior_ms)  # measured round trips, from the replica's own prior

    @property
    def expected_ms(self) -> float:
        return self.latency.mean_ms

    def exits(self, probability: float) -> bool:
        return self.thresholds.exits(probability)

    def _call(self, images: Sequence[np.ndarray], priors: Sequence[float] | None, time_left_ms: float | None):
        timeout_s = self.call_timeout_s if time_left_ms is None else min(self.call_timeout_s, time_left_ms / 1000.0)
        if timeout_s <= 0:
            raise DeadlineExceeded(f"stage {self.name}: no time left for a Ray Serve call")
        batch = [np.ascontiguousarray(img) for img in images]
        t0 = time.perf_counter()
        response = None
        try:
            response = self.handle.score.remote(batch, None if priors is None else [float(p) for p in priors])
            probs, texts = response.result(timeout_s=timeout_s)
        except Exception as exc:
            if response is not None and isinstance(exc, TimeoutError):
                response.cancel()  # free the replica for calls that can still make their deadline
            raise error_from_replica(exc, f"stage {self.name}") from None
        if len(probs) != len(batch):
            raise InferenceError(f"stage {self.name}: Ray Serve answered {len(probs)} probabilities for {len(batch)} images")
        if images:
            self.latency.add((time.perf_counter() - t0) * 1000.0 / len(images))
        return np.asarray(probs, dtype=np.float64), texts

    def score(self, images: Sequence[np.ndarray], time_left_ms: float | None = None) -> np.ndarray:
        return self._call(images, None, time_left_ms)[0]


class RemoteEvidenceStage(RemoteStage):
    """A remote stage that moves the earlier probability (OCR): the cascade calls `score_given`."""

    def score_given(self, images: Sequence[np.ndarray], priors: Sequence[float], time_left_ms: float | None = None) -> tuple[np.ndarray, list[str]]:
        probs, texts = self._call(images, priors, time_left_ms)
        return probs, list(texts or [""] * len(probs))


@dataclass
class RemoteCascade:
    """The cascade over a Ray Serve application, what it serves, and how to let go of it."""

    cascade: Cascade
    info: dict
    _close: Callable[[], None] = field(default=lambda: None, repr=False)

    def close(self) -> None:
        self._close()
        self._close = lambda: None

    def __enter__(self) -> "RemoteCascade":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def describe_app(app_name: str, timeout_s: float, where: str = "") -> dict:
    """The application's description (its ingress deployment's `describe`), or BackendUnavailable."""
    try:
        handle = serve.get_app_handle(app_name)
    except RayServeException as exc:
        raise BackendUnavailable(f"no Ray Serve application {app_name!r} on the cluster{where} ({first_line(exc)}); deploy it with "
                                 "`streetcascade ray-deploy --config miner.toml`") from None
    try:
        info = handle.describe.remote().result(timeout_s=timeout_s)
    except Exception as exc:
        err = error_from_replica(exc, f"Ray Serve application {app_name!r}")
        raise BackendUnavailable(str(err)) from None
    if not isinstance(info, dict) or info.get("protocol") != PROTOCOL:
        raise BackendUnavailable(f"Ray Serve application {app_name!r} is not a streetcascade application of this version "
                                 f"(protocol {info.get('protocol') if isinstance(info, dict) else '?'}, expected {PROTOCOL}); redeploy it")
    return info


def connect_cascade(address: str, ray_cfg: RayConfig = RayConfig(), runtime: RuntimeConfig = RuntimeConfig()) -> RemoteCascade:
    """The cascade of the application `ray_cfg.app_name` on the cluster at `address`."""
    started = connect_ray(address, ray_cfg.connect_timeout_s)
    try:
        info = describe_app(ray_cfg.app_name, ray_cfg.connect_timeout_s, f" at {address or 'auto'}")
        stages = []
        for s in info["stages"]:
            handle = serve.get_deployment_handle(s["deployment"], ray_cfg.app_name)
            cls = RemoteEvidenceStage if s["evidence"] else RemoteStage
            thresholds = msgspec.convert(s["thresholds"], StageThresholds)
            stages.append(cls(s["name"], handle, thresholds, float(s["expected_ms"]), ray_cfg.call_timeout_s, s.get("input_size")))
    except BaseException:
        if started:
            ray.shutdown()
        raise
    log.info("Ray Serve application %r: stages %s, engine set %s (%s, built %s)", ray_cfg.app_name, [s.name for s in stages],
             info.get("engine_dir"), info.get("target"), info.get("built_at"))
    for name in info.get("placeholder_stages", []):
        log.warning("stage %s on Ray Serve runs PLACEHOLDER (random) weights: its answers are not a detector", name)
    cascade = Cascade(stages, safety_margin_ms=runtime.safety_margin_ms)
    return RemoteCascade(cascade, info, ray.shutdown if started else (lambda: None))


__all__ = ["RemoteStage", "RemoteEvidenceStage", "RemoteCascade", "connect_cascade", "connect_ray", "describe_app"]
