"""A stand-in `tensorrt` module, for running our TensorRT builder and runner on a machine
without a GPU. It exposes only names recorded in tests/data/tensorrt_api.json (present in
both TensorRT 10.x and 11.x; a test checks that no fake class offers anything else), and it
computes for real: the "engine" embeds the ONNX graph it was built from and its execution
context runs that graph with ONNX Runtime on the simulated device memory of tests/fake_cuda.py,
so outputs (and the CUDA-graph replay of copies + execution) can be compared with the
reference.
"""

from __future__ import annotations

import base64
import ctypes
import enum
import json
import types

import numpy as np

VERSION = "10.13.0.35"


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity

    def __init__(self):
        pass


class Logger(ILogger):
    def __init__(self, min_severity=Severity.WARNING):
        super().__init__()

    def log(self, severity, msg):
        pass


class NetworkDefinitionCreationFlag(enum.IntEnum):  # 10.x numbering (EXPLICIT_BATCH = 0)
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1
    PREFER_JIT_PYTHON_PLUGINS = 2
    PREFER_AOT_PYTHON_PLUGINS = 3


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4
    TACTIC_SHARED_MEMORY = 5


class BuilderFlag(enum.IntEnum):  # the 11.x members (no precision flags)
    DEBUG = 0
    REFIT = 1
    TF32 = 2


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class FakeTrt:
    """The module's state: what was built and which CUDA stand-in runs the kernels."""

    def __init__(self, cuda, scratch_bytes: int = 1 << 20, fail_parse: bool = False):
        self.cuda = cuda  # tests/fake_cuda.FakeCuda
        self.scratch_bytes = scratch_bytes
        self.fail_parse = fail_parse
        self.built: list[dict] = []

    def module(self) -> types.ModuleType:
        state = self

        class ITensor:
            def __init__(self, name, shape, dtype):
                self.name, self.shape, self.dtype = name, shape, dtype

        class INetworkDefinition:
            def __init__(self, flags):
                self.flags = flags
                self._inputs, self._outputs, self.onnx = [], [], b""

            @property
            def num_inputs(self):
                return len(self._inputs)

            @property
            def num_outputs(self):
                return len(self._outputs)

            @property
            def num_layers(self):
                return 1

            def get_input(self, i):
                return self._inputs[i]

            def get_output(self, i):
                return self._outputs[i]

        class ParserError:
            def __init__(self, text):
                self._text = text

            def desc(self):
                return self._text

            def node(self):
                return -1

            def code(self):
                return 1

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.errors = network, []

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, i):
                return self.errors[i]

            def parse(self, model, path=None):
                import onnx

                if state.fail_parse:
                    self.errors.append(ParserError("Unsupported ONNX operator: If (simulated)"))
                    return False
                m = onnx.load_from_string(model)
                self.network.onnx = model
                self.network._inputs = [ITensor(i.name, None, None) for i in m.graph.input]
                self.network._outputs = [ITensor(o.name, None, None) for o in m.graph.output]
                return True

            def parse_from_file(self, model):
                with open(model, "rb") as f:
                    return self.parse(f.read(), model)

        class ITimingCache:
            def __init__(self, data):
                self.data = bytes(data) or b"fake-timing-cache:"

            def serialize(self):
                return self.data + b"+"

            def combine(self, other, ignore_mismatch):
                return True

        class IOptimizationProfile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, input, min, opt, max):
                self.shapes[input] = [list(min), list(opt), list(max)]

        class IBuilderConfig:
            def __init__(self):
                self.pools, self.profiles, self.cache = {}, [], None
                self.builder_optimization_level = 3
                self.profiling_verbosity = 0
                self.hardware_compatibility_level = 0

            def set_memory_pool_limit(self, pool, pool_size):
                self.pools[pool] = pool_size

            def create_timing_cache(self, serialized_timing_cache):
                return ITimingCache(serialized_timing_cache)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)
                return len(self.profiles) - 1

            def set_flag(self, flag):
                pass

            def clear_flag(self, flag):
                pass

            def set_preview_feature(self, feature, enable):
                pass

        class Builder:
            def __init__(self, logger):
                self.logger = logger

            @property
            def num_DLA_cores(self):
                return 0

            def create_network(self, flags=0):
                return INetworkDefinition(flags)

            def create_builder_config(self):
                return IBuilderConfig()

            def create_optimization_profile(self):
                return IOptimizationProfile()

            def build_serialized_network(self, network, config):
                spec = {
                    "kind": "fake-trt-engine",
                    "inputs": [t.name for t in network._inputs],
                    "outputs": [t.name for t in network._outputs],
                    "profiles": config.profiles[0].shapes if config.profiles else {},
                    "workspace": config.pools.get(MemoryPoolType.WORKSPACE),
                    "strongly_typed": bool(network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))),
                    "onnx": base64.b64encode(network.onnx).decode(),
                }
                state.built.append(spec)
                return json.dumps(spec).encode()

        class IExecutionContext:
            def __init__(self, engine, strategy):
                self.engine, self.strategy = engine, strategy
                self.addresses, self.shapes, self.device_memory = {}, {}, None

            def set_device_memory(self, memory, size):
                assert size >= self.engine.device_memory_size_v2, "scratch arena smaller than the engine needs"
                self.device_memory = (memory, size)

            def set_tensor_address(self, name, memory):
                self.addresses[name] = int(memory)
                return True

            def set_input_shape(self, name, shape):
                lo, _, hi = self.engine.spec["profiles"][name]
                if not all(a <= b <= c for a, b, c in zip(lo, shape, hi)):
                    return False
                self.shapes[name] = list(shape)
                return True

            def execute_async_v3(self, stream_handle):
                if self.strategy == ExecutionContextAllocationStrategy.USER_MANAGED and self.device_memory is None:
                    return False
                engine = self.engine
                shapes = {n: list(s) for n, s in self.shapes.items()}
                addresses = dict(self.addresses)

                def kernel():
                    feeds = {}
                    for name in engine.spec["inputs"]:
                        dtype = np.dtype(engine.dtypes[name])
                        n = int(np.prod(shapes[name])) * dtype.itemsize
                        raw = (ctypes.c_byte * n).from_address(addresses[name])
                        feeds[name] = np.frombuffer(raw, dtype=dtype).reshape(shapes[name]).copy()
                    outs = engine.session.run(None, feeds)
                    for name, value in zip(engine.spec["outputs"], outs):
                        value = np.ascontiguousarray(value)
                        ctypes.memmove(addresses[name], value.ctypes.data, value.nbytes)

                state.cuda.enqueue(stream_handle, kernel)
                return True

            def update_device_memory_size_for_shapes(self):
                return self.engine.device_memory_size_v2

            def set_optimization_profile_async(self, profile_index, stream_handle):
                return True

            @property
            def all_binding_shapes_specified(self):
                return set(self.shapes) == set(self.engine.spec["inputs"])

            def infer_shapes(self):
                return []

        class ICudaEngine:
            def __init__(self, spec):
                import onnxruntime as ort

                self.spec = spec
                model = base64.b64decode(spec["onnx"])
                self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
                self.dtypes = {i.name: {"tensor(uint8)": "uint8", "tensor(float)": "float32"}[i.type] for i in self.session.get_inputs()}
                self._names = spec["inputs"] + spec["outputs"]

            @property
            def num_io_tensors(self):
                return len(self._names)

            def get_tensor_name(self, i):
                return self._names[i]

            def get_tensor_mode(self, name):
                return TensorIOMode.INPUT if name in self.spec["inputs"] else TensorIOMode.OUTPUT

            def get_tensor_shape(self, name):
                return [-1]

            def get_tensor_dtype(self, name):
                return None

            @property
            def device_memory_size_v2(self):
                return state.scratch_bytes

            def get_device_memory_size_for_profile_v2(self, profile_index):
                return state.scratch_bytes

            def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
                return IExecutionContext(self, strategy)

            @property
            def num_optimization_profiles(self):
                return 1

            def get_tensor_profile_shape(self, name, profile_index):
                return self.spec["profiles"][name]

            @property
            def streamable_weights_size(self):
                return 0

            weight_streaming_budget_v2 = 0

            def serialize(self):
                return json.dumps(self.spec).encode()

        class Runtime:
            def __init__(self, logger):
                assert state.cuda.gpus, "a TensorRT Runtime was created without a GPU (segfaults with the real library)"
                self.logger = logger

            def deserialize_cuda_engine(self, serialized_engine):
                try:
                    spec = json.loads(bytes(serialized_engine))
                except (ValueError, UnicodeDecodeError):
                    self.logger.log(Severity.ERROR, "Serialization assertion failed: magic tag does not match (simulated)")
                    return None
                if spec.get("kind") != "fake-trt-engine":
                    return None
                return ICudaEngine(spec)

        m = types.ModuleType("tensorrt")
        m.__version__ = VERSION
        for name, obj in {
            "Builder": Builder, "Runtime": Runtime, "Logger": Logger, "ILogger": ILogger, "OnnxParser": OnnxParser,
            "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag, "BuilderFlag": BuilderFlag,
            "MemoryPoolType": MemoryPoolType, "ExecutionContextAllocationStrategy": ExecutionContextAllocationStrategy,
            "TensorIOMode": TensorIOMode,
        }.items():
            setattr(m, name, obj)
        # Not module attributes of the real package under these names, but what its objects are:
        m._classes = {
            "Builder": Builder, "INetworkDefinition": INetworkDefinition, "ITensor": ITensor, "OnnxParser": OnnxParser,
            "ParserError": ParserError, "IBuilderConfig": IBuilderConfig, "IOptimizationProfile": IOptimizationProfile,
            "ITimingCache": ITimingCache, "Runtime": Runtime, "ICudaEngine": ICudaEngine, "IExecutionContext": IExecutionContext,
        }
        return m


def install(monkeypatch, fake: FakeTrt) -> FakeTrt:
    import sys

    from fake_cuda import forget_modules

    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    forget_modules(monkeypatch, "streetcascade.runtime.backends.tensorrt", "streetcascade.compile.targets.tensorrt")
    return fake
