"""OpenVINO backend (CPU): loads an OpenVINO IR pair (graph `.xml` + weights `.bin`, written
by compile/targets/openvino.py), compiles it for this CPU once per engine, and runs one infer
request per slot.

The precision the CPU plugin computes in is part of the engine, not of the machine: OpenVINO's
default on CPUs with bf16 (AMX, AVX512_BF16) is bf16, so an FP32 engine would silently run in
bf16 there. The target writes the precision it was built and gated for into the IR's rt_info
(`streetcascade/inference_precision`), and this backend asks the plugin for exactly that,
then checks the compiled model took it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Annotated

import msgspec
import numpy as np

from streetcascade.errors import BackendUnavailable, EngineMismatch, InferenceError
from streetcascade.machine import cpu_features, physical_cores, rss_bytes
from streetcascade.manifest import GraphIO, Manifest, MemoryAccount
from streetcascade.settings import RuntimeConfig

from .base import Backend, Engine, Slot, check_cpu_features, first_run_growth, has_free_axes, host_bytes

try:
    import openvino as ov
except ImportError as exc:  # the `openvino` extra installs it
    raise BackendUnavailable(f"openvino is not installed (pip install 'streetcascade[openvino]'): {exc}") from exc

# Our names -> the CPU plugin's INFERENCE_PRECISION_HINT values.
PLUGIN_PRECISION = {"f32": ov.Type.f32, "bf16": ov.Type.bf16}

# Where the target records the engine's compute precision in the IR (rt_info path).
PRECISION_KEY = ["streetcascade", "inference_precision"]
METADATA_KEY = ["streetcascade", "metadata_json"]
# Set by the target on engines it gated at batch 1 and at max_batch (bf16, INT8): the backend
# then also compiles a fixed batch-1 copy (see OvEngine). Never on fp32 engines: with every shape
# fixed, the CPU plugin generates fused kernels whose f32 arithmetic differed from ONNX Runtime's
# by up to 2e-3 (Florence-2's vision tower), more than fp32's parity tolerance.
FIXED_BATCH1_KEY = ["streetcascade", "fixed_batch1"]
# Set by the target on int4 engines built with accuracy_level 0: "0" turns off the CPU plugin's
# dynamic int8 quantization of activations in front of compressed (4-bit) weights, so the
# engine multiplies float activations, as it was checked. Absent: the plugin's default.
DYNAMIC_QUANT_KEY = ["streetcascade", "dynamic_quantization_group_size"]
# CPU features that make the plugin's bf16 real (without them it computes in f32).
BF16_FEATURES = ("avx512_bf16", "amx_bf16")

_core_lock = threading.Lock()
_core: "ov.Core | None" = None


def core() -> "ov.Core":
    """One OpenVINO Core per process (it holds the plugin and its caches)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def has_bf16() -> bool:
    return any(f in cpu_features() for f in BF16_FEATURES)


def inference_precision(model: "ov.Model") -> str:
    """The precision the target recorded in the IR ("f32" or "bf16")."""
    if not model.has_rt_info(PRECISION_KEY):
        raise EngineMismatch("the OpenVINO IR has no streetcascade/inference_precision: not built by `streetcascade compile`")
    value = model.get_rt_info(PRECISION_KEY).astype(str)
    if value not in PLUGIN_PRECISION:
        raise EngineMismatch(f"the OpenVINO IR asks for inference precision {value!r}; known: {', '.join(PLUGIN_PRECISION)}")
    return value


def batch_only(io: GraphIO) -> bool:
    """True when the batch is the only free axis of the graph's inputs (a classifier, a vision
    encoder; not an OCR graph sized per image)."""
    dims = [d for s in io.inputs for d in s.shape]
    return "batch" in dims and not has_free_axes(io.inputs)


def batch1_model(model: "ov.Model", io: GraphIO) -> "ov.Model":
    """A copy of `model` with every input's batch axis fixed at 1."""
    single = model.clone()
    single.reshape({i: ov.PartialShape([1 if d == "batch" else d for d in spec.shape]) for i, spec in enumerate(io.inputs)})
    return single


class OvOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device: str = "cpu"
    intra_op_threads: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0 = one per core


def plugin_config(options: OvOptions, precision: str, dynamic_quantization: int | None = None) -> dict[str, object]:
    """Latency settings for a small CPU box: one stream (one request runs on all the threads),
    one thread per core, threads pinned, and the engine's own compute precision."""
    config: dict[str, object] = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": options.intra_op_threads or physical_cores(),
        "INFERENCE_PRECISION_HINT": PLUGIN_PRECISION[precision],
    }
    if dynamic_quantization is not None:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = dynamic_quantization
    return config


class OvSlot(Slot):
    def __init__(self, engine: "OvEngine"):
        super().__init__(engine)
        self.request = engine.compiled.create_infer_request() if engine.compiled is not None else None
        self.single = engine.single.create_infer_request() if engine.single is not None else None

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.check_feeds(feeds)
        engine = self.engine
        request = self.single if batch == 1 and self.single is not None else self.request
        try:
            # share_inputs: no copy of the (contiguous) input; outputs come back as new arrays.
            # By position: the load checked that the ports are the manifest's tensors, in order.
            result = request.infer([np.ascontiguousarray(feeds[s.name]) for s in engine.io.inputs], share_inputs=True).to_tuple()
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise InferenceError(f"openvino failed: {exc}") from exc
        engine.runs += 1
        return {s.name: np.array(value, dtype=s.dtype, copy=True) for s, value in zip(engine.io.outputs, result)}

    def close(self) -> None:
        self.request = self.single = None


class OvEngine(Engine):
    def __init__(self, path: str, io: GraphIO, options: OvOptions):
        super().__init__(path, io)
        self.options = options
        before = rss_bytes()
        try:
            # The weights named explicitly: OpenVINO then reads the file as IR, and never guesses
            # another frontend (TensorFlow, PaddlePaddle) for a damaged one.
            model = core().read_model(path, str(Path(path).with_suffix(".bin")))
        except Exception as exc:
            raise EngineMismatch(f"{path}: openvino cannot read it: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        self.precision = inference_precision(model)
        self.dynamic_quantization = int(model.get_rt_info(DYNAMIC_QUANT_KEY).astype(str)) if model.has_rt_info(DYNAMIC_QUANT_KEY) else None
        if self.precision == "bf16" and not has_bf16():
            raise EngineMismatch(f"{path}: a bf16 engine, and this CPU has none of {', '.join(BF16_FEATURES)}; recompile here")
        # A port may carry several tensor names (an output that is also another tensor): match
        # the manifest's names against all of them, in the manifest's order.
        names_in = [set(i.get_names()) for i in model.inputs]
        names_out = [set(o.get_names()) for o in model.outputs]
        if len(names_in) != len(io.inputs) or len(names_out) != len(io.outputs) or any(
                s.name not in names for s, names in zip([*io.inputs, *io.outputs], [*names_in, *names_out])):
            raise EngineMismatch(
                f"{path}: graph has inputs {[sorted(n) for n in names_in]} / outputs {[sorted(n) for n in names_out]}, the manifest says "
                f"{[s.name for s in io.inputs]} / {[s.name for s in io.outputs]}"
            )
        # The ONNX graph's metadata (an OCR model's character set, a tokenizer), kept by the target.
        self._metadata = json.loads(model.get_rt_info(METADATA_KEY).astype(str)) if model.has_rt_info(METADATA_KEY) else {}
        # A gated engine whose only free axis is the batch also gets a copy compiled for batch 1
        # with every shape fixed: the CPU plugin then plans memory and picks kernels once, which
        # measured 5-20% faster per image for bf16 and INT8 DINOv3 (docs/benchmarks.md). Batches
        # of 2..max_batch keep the dynamic one (batching still buys ~20% per image). Both count
        # in the memory account, and the target's gate measured both.
        fixed = model.has_rt_info(FIXED_BATCH1_KEY) and model.get_rt_info(FIXED_BATCH1_KEY).astype(str) == "true"
        self.single = self._compile(path, batch1_model(model, io)) if fixed and batch_only(io) else None
        self.compiled = self._compile(path, model) if self.single is None or io.max_batch > 1 else None
        self._weights_bytes = max(rss_bytes() - before, Path(path).with_suffix(".bin").stat().st_size)
        self._activations_bytes: int | None = None

    def _compile(self, path: str, model: "ov.Model") -> "ov.CompiledModel":
        try:
            compiled = core().compile_model(model, "CPU", plugin_config(self.options, self.precision, self.dynamic_quantization))
        except Exception as exc:
            raise EngineMismatch(f"{path}: openvino cannot compile it for this CPU: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        took = compiled.get_property("INFERENCE_PRECISION_HINT")
        if took != PLUGIN_PRECISION[self.precision]:
            raise EngineMismatch(f"{path}: asked openvino for {self.precision}, it compiled for {took}")
        return compiled

    def slot(self) -> OvSlot:
        return OvSlot(self)

    @property
    def two_plans(self) -> bool:
        """The fixed batch-1 copy and the dynamic graph batches of 2..max_batch run on."""
        return self.single is not None and self.compiled is not None

    def warmup_batches(self) -> tuple[int, ...]:
        return (1, self.io.max_batch) if self.two_plans else (1,)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def memory(self) -> MemoryAccount:
        """Like ONNX Runtime's: the RSS growth of compiling, then the peak resident growth of the
        first run at max_batch (`first_run_growth`)."""
        if self._activations_bytes is None:
            # max_batch through the dynamic graph where there is one, and the batch-1 copy's own arena.
            self._activations_bytes = first_run_growth(self, also=(1,) if self.two_plans else ())
        return MemoryAccount(
            device="cpu",
            weights_bytes=self._weights_bytes,
            activations_bytes=self._activations_bytes,
            host_buffers_bytes=host_bytes(self.io.outputs, self.io.max_batch, self.io.axis_sizes),
            method="rss-peak",
        )

    def close(self) -> None:
        self.compiled = self.single = None


class OpenVinoBackend(Backend):
    name = "openvino"
    Options = OvOptions
    package = "openvino"

    @classmethod
    def options_for(cls, runtime: RuntimeConfig, device: str) -> OvOptions:
        if device != "cpu":
            raise BackendUnavailable(f"the openvino backend runs on the CPU; device {device!r} is not supported")
        return OvOptions(device=device, intra_op_threads=runtime.intra_op_threads)

    def load(self, path: str, io: GraphIO, options: OvOptions) -> OvEngine:
        return OvEngine(path, io, options)

    def check_target(self, manifest: Manifest, engine_dir) -> None:
        super().check_target(manifest, engine_dir)  # arch, openvino major.minor
        check_cpu_features(manifest, engine_dir)
