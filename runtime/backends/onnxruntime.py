"""ONNX Runtime backend: one InferenceSession per engine (shared, thread-safe `run`), one IO
binding per slot with its output buffers allocated once, at max_batch, when the slot is made.

Graphs on disk are already optimised offline (compile.targets.onnxruntime, which runs this
backend with `save_optimized_to`), so loading skips the optimiser: that is what makes load fast.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import numpy as np

from streetcascade.errors import BackendUnavailable, BadInput, EngineMismatch, InferenceError, StreetcascadeError
from streetcascade.gpu import check_sm, free_bytes
from streetcascade.machine import physical_cores, rss_bytes
from streetcascade.manifest import GraphIO, Manifest, MemoryAccount, TargetInfo
from streetcascade.settings import RuntimeConfig

from .base import Backend, Engine, Slot, check_cpu_features, first_run_growth, has_free_axes, host_bytes

try:
    import onnxruntime as ort
except ImportError as exc:  # the `cpu` or `cuda` extra installs it
    raise BackendUnavailable(f"onnxruntime is not installed (pip install 'streetcascade[cpu]' or '[cuda]'): {exc}") from exc

log = logging.getLogger(__name__)


class OrtOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device: Literal["cpu", "cuda"] = "cpu"
    intra_op_threads: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0 = one per core
    spin_wait: bool = True
    # Run ORT's full optimiser at load: for graphs not optimised offline (compile-time tools,
    # and GPU graphs, whose fusions depend on the execution provider).
    optimize: bool = False
    # Write the optimised graph here (the offline optimisation step of compile); "" = don't.
    save_optimized_to: str = ""
    # ...with its weights in this companion file beside it ("" = inline): graphs past protobuf's
    # 2 GiB limit (a VLM's language model in FP32).
    save_weights_to: str = ""
    # cuda: which execution provider runs the graph (the CUDA provider backs TensorRT's up).
    execution_provider: Literal["cuda", "tensorrt"] = "cuda"
    gpu_index: Annotated[int, msgspec.Meta(ge=0)] = 0
    cuda_graphs: bool = True
    # TensorRT provider: its engine and timing caches ("" = next to the graph file).
    cache_dir: str = ""


def session_options(options: OrtOptions) -> "ort.SessionOptions":
    """Options tuned for batch-1 latency on a small CPU box.

    One intra-op thread per core (hyper-threads only add contention for GEMM-bound graphs),
    a sequential executor (our graphs are one chain), the memory arena and memory-pattern
    planning on (no allocation per call after the first at a given shape).
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads or physical_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    optimize = options.optimize or bool(options.save_optimized_to)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if options.save_optimized_to:
        so.optimized_model_filepath = options.save_optimized_to
        if options.save_weights_to:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", options.save_weights_to)
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        # ORT warns that an ENABLE_ALL graph may hold hardware-specific (NCHWc) kernels: that is
        # why the manifest records the CPU features and `check_target` compares them.
        so.log_severity_level = 3
    # Spinning keeps worker threads hot between ops (lower latency) at the price of CPU time.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin_wait else "0")
    if options.device != "cpu":
        # onnxruntime-gpu silently runs on the CPU when a CUDA library is missing: make it an error.
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return so


def gpu_providers(options: OrtOptions, graph_path: str) -> list[tuple[str, dict[str, str]]]:
    """The provider list (with options) for a GPU session. Pure: built and tested without a GPU.

    CUDA provider: CUDA graphs (one per slot and batch size, `gpu_graph_id`), exhaustive cuDNN search
    once per shape. TensorRT provider first when asked for, its engine and timing caches under
    `cache_dir` (built on first load, reused after), the CUDA provider behind it for any node
    TensorRT does not take. Never the CPU provider: `session.disable_cpu_ep_fallback` makes a
    missing CUDA library an error instead of a silent CPU run."""
    device_id = str(options.gpu_index)
    cuda = ("CUDAExecutionProvider", {
        "device_id": device_id,
        "enable_cuda_graph": "1" if options.cuda_graphs else "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "1",
        "arena_extend_strategy": "kSameAsRequested",
    })
    if options.execution_provider == "cuda":
        return [cuda]
    cache = options.cache_dir or str(Path(graph_path).parent / "ort-trt-cache")
    trt = ("TensorrtExecutionProvider", {
        "device_id": device_id,
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": cache,
        # Off: ORT's TensorRT provider keeps one CUDA graph per session (no gpu_graph_id in the
        # releases read), replayed whatever is bound: with batch sizes 1..max_batch and one IO
        # binding per slot it would replay another batch's or another slot's addresses.
        "trt_cuda_graph_enable": "False",
        "trt_builder_optimization_level": "3",
    })
    return [trt, cuda]


def graph_capture_refused(exc: BaseException) -> bool:
    """ONNX Runtime's refusal, at session creation, to capture a graph that is not entirely on
    the capturing provider ("This session cannot use the graph capture feature as requested
    by the user as all compute graph nodes have not been partitioned to the CUDA EP", and its
    variants across versions)."""
    text = str(exc).lower()
    return "graph capture" in text or "cuda graph" in text


def providers_for(options: OrtOptions, graph_path: str = "") -> list:
    if options.device == "cpu":
        return ["CPUExecutionProvider"]
    if options.device == "cuda":
        wanted = gpu_providers(options, graph_path)
        available = ort.get_available_providers()
        missing = [name for name, _ in wanted if name not in available]
        if missing:
            raise BackendUnavailable(f"onnxruntime here has no {', '.join(missing)} (available: {', '.join(available)}); "
                                     "install onnxruntime-gpu (pip install 'streetcascade[cuda]') with matching CUDA libraries")
        if options.execution_provider == "tensorrt":
            Path(wanted[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        return wanted
    raise BadInput(f"unknown device {options.device!r} for onnxruntime (use cpu or cuda)")


class OrtSlot(Slot):
    def __init__(self, engine: "OrtEngine"):
        super().__init__(engine)
        self._binding = engine.session.io_binding()
        # Output buffers at max_batch, allocated once; a smaller batch binds a leading view.
        # Outputs whose size depends on the input's (an OCR map) are allocated by ORT per call.
        self.fixed_outputs = not has_free_axes(engine.io.outputs)
        self.output_buffers = {s.name: np.empty([engine.io.max_batch, *s.shape[1:]], dtype=s.dtype) for s in engine.io.outputs} if self.fixed_outputs else {}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.check_feeds(feeds)
        engine = self.engine
        if not self.fixed_outputs:
            try:
                outs = engine.session.run(None, {s.name: np.ascontiguousarray(feeds[s.name]) for s in engine.io.inputs})
            except Exception as exc:
                raise InferenceError(f"onnxruntime failed: {exc}") from exc
            engine.runs += 1
            return {s.name: out for s, out in zip(engine.io.outputs, outs)}
        for spec in engine.io.inputs:
            self._binding.bind_cpu_input(spec.name, np.ascontiguousarray(feeds[spec.name]))
        views = {name: buf[:batch] for name, buf in self.output_buffers.items()}
        for name, view in views.items():
            self._binding.bind_output(name, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)
        try:
            engine.session.run_with_iobinding(self._binding)
        except Exception as exc:  # onnxruntime raises its own (Fail, InvalidArgument, ...)
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        engine.runs += 1
        # Outputs are small (a logit per image): copy so callers never see a buffer reused later.
        return {name: view.copy() for name, view in views.items()}

    def infer_keep(self, feeds: dict, keep: frozenset[str] = frozenset()) -> dict:
        """IO binding: numpy inputs are bound as they are, OrtValue inputs (outputs kept from an
        earlier step) without a copy; outputs in `keep` stay OrtValues in ORT's arena, the rest
        come back as numpy."""
        engine = self.engine
        names = {s.name for s in engine.io.inputs}
        if set(feeds) != names:
            raise BadInput(f"inputs {sorted(feeds)}, the engine takes {sorted(names)}")
        binding = engine.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for spec in engine.io.outputs:
            binding.bind_output(spec.name, "cpu")
        try:
            engine.session.run_with_iobinding(binding)
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        engine.runs += 1
        values = binding.get_outputs()
        return {spec.name: (v if spec.name in keep else v.numpy()) for spec, v in zip(engine.io.outputs, values)}

    def close(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()


class OrtGpuSlot(Slot):
    """IO bound on the GPU: per batch size, device input and output buffers made once and bound
    once (a CUDA graph replays the addresses it was captured with), one `gpu_graph_id` per
    (slot, batch size).

    ONNX Runtime's CUDA graphs (provider option `enable_cuda_graph`, ORT docs "Using CUDA
    Graphs"): inputs and outputs bound through IOBinding to device OrtValues whose addresses
    never change, new inputs copied into those OrtValues (`update_inplace`), shapes fixed per
    graph; the first run(s) of a graph id run plainly and capture, later runs replay. Two
    consequences for slots: a graph id belongs to one slot's buffers (a graph captured on slot
    A's input address would, replayed for slot B, read slot A's input), so ids are per slot; and
    `run` must not be entered from two threads at once while graphs are on (the same docs), so
    runs take the engine's lock."""

    def __init__(self, engine: "OrtEngine", index: int = 0):
        super().__init__(engine)
        self.index = index
        self._per_batch: dict[int, tuple] = {}

    def graph_id(self, batch: int) -> int:
        return self.index * (self.engine.io.max_batch + 1) + batch

    def _buffers(self, batch: int):
        entry = self._per_batch.get(batch)
        if entry is None:
            engine = self.engine
            device_id = engine.options.gpu_index
            binding = engine.session.io_binding()
            inputs, outputs = {}, {}
            for spec in engine.io.inputs:
                inputs[spec.name] = ort.OrtValue.ortvalue_from_shape_and_type([batch, *spec.shape[1:]], np.dtype(spec.dtype).type, "cuda", device_id)
                binding.bind_ortvalue_input(spec.name, inputs[spec.name])
            for spec in engine.io.outputs:
                outputs[spec.name] = ort.OrtValue.ortvalue_from_shape_and_type([batch, *spec.shape[1:]], np.dtype(spec.dtype).type, "cuda", device_id)
                binding.bind_ortvalue_output(spec.name, outputs[spec.name])
            run_options = ort.RunOptions()
            if engine.graphs_enabled:
                run_options.add_run_config_entry("gpu_graph_id", str(self.graph_id(batch)))
            entry = self._per_batch[batch] = (binding, inputs, outputs, run_options)
        return entry

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.check_feeds(feeds)
        engine = self.engine
        binding, inputs, outputs, run_options = self._buffers(batch)
        with engine.run_lock:
            for name, value in inputs.items():
                value.update_inplace(np.ascontiguousarray(feeds[name]))
            try:
                engine.session.run_with_iobinding(binding, run_options)
            except Exception as exc:
                raise InferenceError(f"onnxruntime ({engine.options.execution_provider} provider) failed: {exc}") from exc
            engine.runs += 1
            return {name: value.numpy() for name, value in outputs.items()}

    def close(self) -> None:
        for binding, *_ in self._per_batch.values():
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
        self._per_batch = {}


class OrtEngine(Engine):
    def __init__(self, path: str, io: GraphIO, options: OrtOptions):
        super().__init__(path, io)
        self.options = options
        # Host RAM on a CPU; on a GPU what the device lost (cudaMemGetInfo), as measured figures.
        self._used = rss_bytes if options.device == "cpu" else (lambda: -free_bytes(options.gpu_index))
        before = self._used()
        self.graphs_enabled = options.device == "cuda" and options.cuda_graphs
        self.graphs_note = ""
        try:
            self.session = self._session(path, options)
        except EngineMismatch as exc:
            refusal = exc.__cause__
            if not (self.graphs_enabled and refusal is not None and graph_capture_refused(refusal)):
                raise
            # ORT refuses graph capture at session creation when a node is not on the
            # capturing provider: run without graphs, say so once.
            self.graphs_enabled = False
            self.graphs_note = f"CUDA graphs refused by onnxruntime ({str(refusal).splitlines()[0][:300]}); running without them"
            log.warning("%s: %s", path, self.graphs_note)
            self.session = self._session(path, msgspec.structs.replace(options, cuda_graphs=False))
        self.run_lock = threading.Lock() if self.graphs_enabled else contextlib.nullcontext()
        self._slot_index = itertools.count()
        # Weights are inline in our graphs: the file size is a floor for what the session holds
        # (ORT may also pre-pack GEMM weights, which the RSS delta catches).
        self._weights_bytes = max(self._used() - before, Path(path).stat().st_size)
        self._activations_bytes: int | None = None
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != [s.name for s in io.inputs] or names_out != [s.name for s in io.outputs]:
            raise EngineMismatch(
                f"{path}: graph has inputs {names_in} / outputs {names_out}, the manifest says "
                f"{[s.name for s in io.inputs]} / {[s.name for s in io.outputs]}"
            )

    @staticmethod
    def _session(path: str, options: OrtOptions):
        """The session; anything onnxruntime raises becomes EngineMismatch (the cause kept)."""
        try:
            return ort.InferenceSession(path, sess_options=session_options(options), providers=providers_for(options, path))
        except StreetcascadeError:
            raise
        except Exception as exc:
            raise EngineMismatch(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from exc

    def slot(self) -> Slot:
        # The GPU slot keeps device buffers per slot and batch size (CUDA graphs replay fixed
        # addresses): only for graphs whose batch is their one free axis; others (OCR maps, a VLM's
        # token axes) bind per call.
        fixed = not has_free_axes(self.io.outputs) and not has_free_axes(self.io.inputs)
        if self.options.device == "cpu" or not fixed:
            return OrtSlot(self)
        return OrtGpuSlot(self, next(self._slot_index))

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def memory(self) -> MemoryAccount:
        """Weights: the RSS growth of creating the session. Activations: the peak resident growth
        of the first run at max_batch and the largest declared axes (`first_run_growth`; ORT's
        arena keeps its peak), so measure on a fresh engine."""
        if self._activations_bytes is None:
            self._activations_bytes = first_run_growth(self, None if self.options.device == "cpu" else self._used)
        return MemoryAccount(
            device=self.options.device,
            weights_bytes=self._weights_bytes,
            activations_bytes=self._activations_bytes,
            host_buffers_bytes=host_bytes(self.io.outputs, self.io.max_batch, self.io.axis_sizes),
            method="rss-peak" if self.options.device == "cpu" else "cuda-meminfo-delta",
        )

    def close(self) -> None:
        self.session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    Options = OrtOptions
    package = "onnxruntime"

    @classmethod
    def options_for(cls, runtime: RuntimeConfig, device: str) -> OrtOptions:
        # GPU graphs are stored unoptimised (the fusions depend on the provider): optimise at load.
        return OrtOptions(device=device, intra_op_threads=runtime.intra_op_threads, spin_wait=runtime.spin_wait,
                          optimize=device != "cpu", cuda_graphs=runtime.cuda_graphs)

    @classmethod
    def options_for_target(cls, runtime: RuntimeConfig, target: TargetInfo) -> OrtOptions:
        options = cls.options_for(runtime, target.device)
        if target.device == "cuda" and target.execution_provider:
            options = msgspec.structs.replace(options, execution_provider=target.execution_provider)
        return options

    def load(self, path: str, io: GraphIO, options: OrtOptions) -> OrtEngine:
        return OrtEngine(path, io, options)

    def check_target(self, manifest: Manifest, engine_dir) -> None:
        super().check_target(manifest, engine_dir)
        target = manifest.target
        if target.device == "cuda":
            check_sm(manifest, engine_dir)
        if target.device == "cpu":
            check_cpu_features(manifest, engine_dir)
