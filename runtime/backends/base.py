"""The backend interface. A backend loads an Engine (one graph: loaded once, shared,
immutable) that hands out Slots (one per concurrent request / stream: its IO buffers).

Two phases: `Backend.load` may be slow and fail loudly; `Slot.infer` is the hot path and must
not allocate what it can reuse. Everything a backend has in common lives here once: the
context-manager plumbing, the input checks, the batched run over many images, the arch check.
A new backend subclasses these three classes in one file of this folder and adds a line to the
registry in `__init__.py` (plus its builder in compile/targets/); see docs/architecture.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar

import msgspec
import numpy as np

from streetcascade.errors import BadInput, EngineMismatch, InferenceError
from streetcascade.machine import arch, cpu_features, host_memory_growth, version_of
from streetcascade.manifest import GraphIO, Manifest, MemoryAccount, TargetInfo, TensorSpec
from streetcascade.settings import RuntimeConfig

__all__ = ["Backend", "Closeable", "Engine", "GraphIO", "MemoryAccount", "Slot", "TensorSpec", "check_cpu_features", "example_feeds", "first_run_growth", "has_free_axes", "host_bytes"]


class Closeable:
    """`with thing:` closes the thing; `close` must be safe to call twice."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def concrete_shape(spec: TensorSpec, batch: int, sizes: dict[str, int] | None = None) -> list[int]:
    """The spec's shape with the "batch" axis set, and other named axes from `sizes` (an OCR
    graph's "height"/"width"); a named axis without a size is an error."""
    shape = []
    for d in spec.shape:
        if d == "batch":
            shape.append(batch)
        elif isinstance(d, str):
            if not sizes or d not in sizes:
                raise BadInput(f"tensor {spec.name!r}: axis {d!r} has no declared size")
            shape.append(sizes[d])
        else:
            shape.append(d)
    return shape


def has_free_axes(specs: list[TensorSpec]) -> bool:
    """True when a tensor has a named axis besides "batch" (sized per call, e.g. image width)."""
    return any(isinstance(d, str) and d != "batch" for s in specs for d in s.shape)


def host_bytes(specs: list[TensorSpec], batch: int, sizes: dict[str, int] | None = None) -> int:
    """Bytes of host buffers holding `specs` at `batch`."""
    return sum(int(np.prod(concrete_shape(s, batch, sizes))) * np.dtype(s.dtype).itemsize for s in specs)


def example_feeds(io: GraphIO, batch: int) -> dict[str, np.ndarray]:
    """Zero-filled inputs at `batch` (warm-up, memory measurement), named axes at io.axis_sizes."""
    return {s.name: np.zeros(concrete_shape(s, batch, io.axis_sizes), dtype=s.dtype) for s in io.inputs}


def check_cpu_features(manifest: Manifest, engine_dir) -> None:
    """Refuse a CPU engine set compiled on a CPU with ISA features this one lacks (kernels and
    layouts picked for AVX-512, VNNI, AMX or bf16 at build time)."""
    missing = sorted(set(manifest.target.cpu_features) - set(cpu_features()))
    if missing:
        raise EngineMismatch(f"{engine_dir}: built on a CPU with {', '.join(missing)}, which this CPU lacks; "
                             "recompile on this machine (`streetcascade compile`)")


def first_run_growth(engine: "Engine", used: Callable[[], int] | None = None, also: tuple[int, ...] = ()) -> int:
    """The memory the first run at the largest shapes the engine is declared for (max_batch, every
    named axis at its io.axis_sizes: a VLM prefill's longest prompt + image) takes: the
    activations an engine's arena keeps at its peak. Only a fresh engine shows it. `used`: a
    reading of device memory taken (its growth is measured); None: host memory, measured as
    the run's peak resident growth (`machine.host_memory_growth`), which neither heap memory an
    earlier stage freed nor buffers freed before the run ends can hide.
    `also`: batches that run through another plan of the engine (its own arena), added in."""
    if engine.runs:
        raise InferenceError(f"{engine.path}: memory must be measured before the engine's first run (its arena is already grown)")
    feeds = [example_feeds(engine.io, batch) for batch in (engine.io.max_batch, *also)]  # allocated before the measurement

    def run() -> None:
        with engine.slot() as slot:
            for f in feeds:
                slot.infer(f)

    if used is None:
        return host_memory_growth(run)
    before = used()
    run()
    return max(0, used() - before)


class Slot(Closeable, ABC):
    """One request's worth of state over an engine. Not shared between threads."""

    def __init__(self, engine: "Engine"):
        self.engine = engine

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph once. Returns new arrays (never a buffer the slot reuses)."""

    def infer_keep(self, feeds: dict, keep: frozenset[str] = frozenset()) -> dict:
        """Like `infer`, but the outputs named in `keep` may come back as the backend's own
        handles (not numpy), which `infer_keep` of a slot of the same backend takes back as
        inputs without a copy: a decoder's key/value cache stays where the backend keeps it
        between steps. The default (any backend) is plain numpy."""
        return self.infer({k: (v if isinstance(v, np.ndarray) else np.asarray(v)) for k, v in feeds.items()})

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> int:
        """Names, dtypes and fixed axes as the engine declares them; returns the batch size."""
        io = self.engine.io
        batch = None
        for spec in io.inputs:
            if spec.name not in feeds:
                raise BadInput(f"missing input {spec.name!r}")
            x = feeds[spec.name]
            if not isinstance(x, np.ndarray) or x.dtype != np.dtype(spec.dtype):
                raise BadInput(f"input {spec.name!r}: dtype {getattr(x, 'dtype', type(x).__name__)}, the engine takes {spec.dtype}")
            fixed = list(spec.shape[1:])
            # Named axes (besides batch) take any positive size: an OCR graph's height and width.
            if x.ndim != len(spec.shape) or any(not isinstance(d, str) and d != n for d, n in zip(fixed, x.shape[1:])) or 0 in x.shape:
                raise BadInput(f"input {spec.name!r}: shape {list(x.shape)}, the engine takes [batch, {', '.join(map(str, fixed))}]")
            if batch is not None and x.shape[0] != batch:
                raise BadInput(f"input {spec.name!r}: batch {x.shape[0]}, other inputs have {batch}")
            batch = x.shape[0]
        if batch is None or not 1 <= batch <= io.max_batch:
            raise BadInput(f"batch of {batch} images; the engine runs 1..{io.max_batch}")
        return batch

    def logits(self, images: np.ndarray, batch: int | None = None) -> np.ndarray:
        """A one-input, one-output graph over any number of images, in batches of `batch`
        (default: the engine's max_batch): the output flattened to float64, one value per image."""
        io = self.engine.io
        batch = batch or io.max_batch
        name_in, name_out = io.inputs[0].name, io.outputs[0].name
        out = np.empty(len(images), dtype=np.float64)
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            value = self.infer({name_in: chunk})[name_out]
            # One value per image, or numpy would broadcast a single one over the whole batch
            # (what an OpenVINO graph that reduced over the batch axis returned: every image
            # got the same, wrong, answer; docs/openvino-reduce.md).
            if value.size != len(chunk):
                raise InferenceError(f"{self.engine.path}: output {name_out!r} has shape {list(value.shape)} for a batch of "
                                     f"{len(chunk)} images; one value per image expected (the graph mixes the batch)")
            out[start : start + len(chunk)] = value.reshape(-1)
        return out


class Engine(Closeable, ABC):
    """One loaded graph. Thread-safe to share; each thread works through its own `slot()`."""

    def __init__(self, path: str, io: GraphIO):
        self.path = path
        self.io = io
        self.runs = 0  # inference calls so far, for backends that count them (see first_run_growth)

    @abstractmethod
    def slot(self) -> Slot: ...

    def metadata(self) -> dict[str, str]:
        """Key/value metadata stored in the engine file (e.g. an OCR model's character set)."""
        return {}

    def warmup_batches(self) -> tuple[int, ...]:
        """Batch sizes the loader runs once before serving, so no request pays a first run: one
        per compiled plan the engine holds (most hold one, used at batch 1 first)."""
        return (1,)

    @abstractmethod
    def memory(self) -> MemoryAccount:
        """What this engine needs at max_batch, measured or read from the library. Backends
        that measure (a peak at max_batch) need a fresh engine: call it before any inference."""


class Backend(ABC):
    """Loads engines of one kind. `Options` is the backend's own settings Struct, derived from
    the run-time settings by `options_for`."""

    name: ClassVar[str]
    Options: ClassVar[type[msgspec.Struct]]
    # The Python package whose major.minor must match between build and run, if any.
    package: ClassVar[str | None] = None

    @classmethod
    @abstractmethod
    def options_for(cls, runtime: RuntimeConfig, device: str) -> msgspec.Struct: ...

    @classmethod
    def options_for_target(cls, runtime: RuntimeConfig, target: "TargetInfo") -> msgspec.Struct:
        """Options for an engine set built for `target` (backends with per-target choices,
        e.g. ONNX Runtime's execution provider, override this)."""
        return cls.options_for(runtime, target.device)

    @abstractmethod
    def load(self, path: str, io: GraphIO, options: msgspec.Struct) -> Engine: ...

    def close(self) -> None:
        """Free what the backend shares between its engines (e.g. a GPU scratch arena); called
        after every engine it loaded is closed."""

    def check_target(self, manifest: Manifest, engine_dir: str | Path) -> None:
        """Refuse an engine set built for another machine or library version (EngineMismatch).
        Backends extend this with what else their engines depend on (ISA, GPU SM, ...)."""
        target = manifest.target
        if target.arch != arch():
            raise EngineMismatch(f"{engine_dir}: built for {target.arch}, this machine is {arch()}")
        if self.package:
            built = manifest.library_versions.get(self.package)
            here = version_of(self.package)
            if built and here and built.split(".")[:2] != here.split(".")[:2]:
                raise EngineMismatch(f"{engine_dir}: built with {self.package} {built}, this machine has {here}; recompile")
