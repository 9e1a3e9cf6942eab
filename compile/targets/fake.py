"""The fake target (the compile half of runtime/backends/fake.py): writes a small JSON engine
file that the fake backend loads. Its engines compute the fake model (mean pixel), so only a
family with that same reference passes parity: tests use it to show the pipeline, loader and
registries are backend-agnostic."""

from __future__ import annotations

import msgspec

from streetcascade.config import CascadeConfig
from streetcascade.errors import ConfigError
from streetcascade.machine import arch
from streetcascade.manifest import TargetInfo
from streetcascade.runtime.backends.fake import ENGINE_KIND, FakeEngineFile

from .base import BuildJob, BuiltGraph, Target


class FakeTarget(Target):
    backend = "fake"
    precisions = ("fp32",)
    suffix = ".json"

    def describe(self, config: CascadeConfig) -> TargetInfo:
        if config.target.device != "cpu":
            raise ConfigError(f"target.device {config.target.device!r}: the fake target is cpu only")
        return TargetInfo(name=config.target.name or f"fake-{arch()}", backend=self.backend, device="cpu", arch=arch())

    def build(self, job: BuildJob) -> BuiltGraph:
        job.out.write_bytes(msgspec.json.encode(FakeEngineFile(kind=ENGINE_KIND)))
        return BuiltGraph(job.out)


TARGET = FakeTarget()
