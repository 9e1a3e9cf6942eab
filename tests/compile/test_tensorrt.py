"""The TensorRT target and backend on a machine without a GPU or TensorRT.

TensorRT cannot be installed from the package registry here (the `tensorrt` wheels fetch the
real ones from NVIDIA's index), and without a GPU its objects segfault the process. So:
- the API names our code may use are recorded in tests/data/tensorrt_api.json (present in both
  TensorRT 10.x and 11.x, from NVIDIA's binding sources) and, for the runtime side, compared
  with the installable `tensorrt-lean-cu12` 11.x wheel (network marker);
- the builder and runner run end to end against stand-ins (tests/fake_tensorrt.py,
  tests/fake_cuda.py) that expose only those names and compute for real (ONNX Runtime on
  simulated device memory), so parity, CUDA-graph replay and the shared arena are checked.
GPU tests (`-m gpu`) rerun the important ones on a real GPU with the real library.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streetcascade.compile.pipeline import compile_cascade
from streetcascade.manifest import read_manifest, write_manifest
from streetcascade.runtime import decode_image, load_engine_set, resize_to
from support import SAMPLES, write_config

import fake_cuda
import fake_tensorrt
from streetcascade.errors import BackendUnavailable, CompileError, EngineMismatch

API = json.loads((Path(__file__).resolve().parents[1] / "data" / "tensorrt_api.json").read_text())


@pytest.fixture
def sim(monkeypatch):
    """A simulated RTX 4090 and the TensorRT stand-in, installed as `cuda.bindings.runtime` and `tensorrt`."""
    from streetcascade import gpu

    cuda = fake_cuda.install(monkeypatch, fake_cuda.FakeCuda())
    trt = fake_tensorrt.install(monkeypatch, fake_tensorrt.FakeTrt(cuda))
    yield trt
    gpu.probe_gpus.cache_clear()


def trt_config(tmp_path, tiny_dinov3_dir, precision="fp32", name="stage1"):
    return write_config(tmp_path / "gpu.toml", [{"name": name, "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4,
                                                 "precision": precision}],
                        tmp_path / "engines", parity_images=str(SAMPLES), target={"backend": "tensorrt", "device": "cuda"})


# -- names --

def test_stand_ins_offer_only_recorded_names(sim):
    m = sys.modules["tensorrt"]
    for cls_name, cls in m._classes.items():
        public = {n for n in vars(cls) if not n.startswith("_")}
        recorded = set(API[cls_name]) | ({"deserialize_cuda_engine"} if cls_name == "Runtime" else set())
        assert public <= recorded, (cls_name, public - recorded)
    assert {n for n in vars(m) if not n.startswith("_")} <= set(API["module"])
    assert {e.name for e in m.NetworkDefinitionCreationFlag} <= set(API["NetworkDefinitionCreationFlag@10"])
    assert {e.name for e in m.MemoryPoolType} <= set(API["MemoryPoolType"])
    assert {e.name for e in m.BuilderFlag} <= set(API["BuilderFlag@11"])


def test_cuda_stand_in_names_exist_in_the_real_bindings():
    rt = pytest.importorskip("cuda.bindings.runtime", exc_type=ImportError)
    missing = [n for n in (*fake_cuda.FakeCuda.FUNCTIONS, *fake_cuda.FakeCuda.CONSTANTS) if not hasattr(rt, n)]
    assert not missing
    for enum_name, members in {"cudaMemcpyKind": fake_cuda.cudaMemcpyKind, "cudaStreamCaptureMode": fake_cuda.cudaStreamCaptureMode,
                               "cudaStreamCaptureStatus": fake_cuda.cudaStreamCaptureStatus, "cudaError_t": fake_cuda.cudaError_t}.items():
        real = getattr(rt, enum_name)
        assert all(hasattr(real, m.name) for m in members), enum_name


@pytest.mark.network
def test_recorded_runtime_names_exist_in_tensorrt_lean(tmp_path_factory):
    """The runtime half of the record against the real TensorRT 11 lean wheel (pip-installed
    once into the cache; import only, never a Runtime: no GPU here)."""
    from streetcascade.machine import cache_dir

    target = cache_dir() / "tensorrt-lean-cu12"
    if not (target / "tensorrt_lean").exists():
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), "tensorrt-lean-cu12"],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            pytest.skip(f"NOT CHECKED against tensorrt-lean: cannot install it from PyPI: {r.stderr[-300:]}")
    code = f"""
import json, sys
sys.path.insert(0, {str(target)!r})
import tensorrt_lean as trt
api = json.load(open({str(Path(__file__).resolve().parents[1] / 'data' / 'tensorrt_api.json')!r}))
missing = []
for key in ["Runtime", "ICudaEngine", "IExecutionContext", "ExecutionContextAllocationStrategy", "TensorIOMode", "MemoryPoolType", "BuilderFlag@11", "ILogger.Severity"]:
    obj = trt
    for part in key.split("@")[0].split("."):
        obj = getattr(obj, part)
    missing += [key + "." + n for n in api[key] if not hasattr(obj, n)]
missing += [n for n in api["module"] if n not in ("Builder", "OnnxParser", "NetworkDefinitionCreationFlag") and not hasattr(trt, n)]
print(json.dumps({{"version": trt.__version__, "missing": missing}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["version"].startswith("11.") and out["missing"] == []


# -- without a GPU or TensorRT --

def test_backend_without_tensorrt_is_unavailable(monkeypatch):
    from streetcascade.runtime.backends import get_backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.delitem(sys.modules, "streetcascade.runtime.backends.tensorrt", raising=False)
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        get_backend("tensorrt")


def test_probe_finds_no_gpu_here():
    from streetcascade import gpu

    gpu.probe_gpus.cache_clear()
    try:
        if gpu.cuda_runtime() is not None:
            assert gpu.probe_gpus() == ()  # cudaErrorInsufficientDriver: no driver, no GPU
        with pytest.raises(BackendUnavailable, match="NVIDIA GPU"):
            gpu.require_gpu()
    finally:
        gpu.probe_gpus.cache_clear()


def test_probe_sees_the_simulated_gpu(sim):
    from streetcascade.gpu import gpu_slug, probe_gpus

    (g,) = probe_gpus()
    assert (g.name, g.sm, g.target_name, g.driver_version) == ("NVIDIA GeForce RTX 4090", "8.9", "sm89-rtx4090", "12.8")
    assert g.total_bytes == 24 << 30 and g.free_bytes == g.total_bytes
    assert [gpu_slug(n) for n in ("NVIDIA H200", "NVIDIA A10G", "NVIDIA RTX A5000", "NVIDIA L4")] == ["h200", "a10g", "rtxa5000", "l4"]


def test_no_gpu_no_target_and_no_runtime(monkeypatch, tmp_path, tiny_dinov3_dir):
    from streetcascade import gpu

    cuda = fake_cuda.install(monkeypatch, fake_cuda.FakeCuda(gpus=0))
    fake_tensorrt.install(monkeypatch, fake_tensorrt.FakeTrt(cuda))
    try:
        with pytest.raises(BackendUnavailable, match="NVIDIA GPU"):
            compile_cascade(trt_config(tmp_path, tiny_dinov3_dir), progress=False)
    finally:
        gpu.probe_gpus.cache_clear()


# -- build, load, run on the simulated GPU --

def reference_probabilities(images: np.ndarray, engine_dir) -> np.ndarray:
    """The same images through the ONNX Runtime FP32 path of the same checkpoint."""
    with load_engine_set(engine_dir) as es:
        return es.cascade.stages[0].score(list(images))


def test_compile_load_and_parity(sim, tmp_path, tiny_dinov3_dir, tiny_engine_dir):
    dest = compile_cascade(trt_config(tmp_path, tiny_dinov3_dir), progress=False)
    assert dest.name == "sm89-rtx4090"
    m = read_manifest(dest)
    g = m.stages[0].graphs[0]
    assert (m.target.backend, m.target.device, m.target.sm, m.target.gpu_name) == ("tensorrt", "cuda", "8.9", "NVIDIA GeForce RTX 4090")
    assert g.file == "stage1.classifier.fp32.plan" and g.memory.method == "tensorrt-engine" and g.memory.device == "cuda"
    assert g.build.profiles["pixels"] == [[1, 224, 224, 3], [1, 224, 224, 3], [4, 224, 224, 3]]
    assert g.build.builder.startswith("tensorrt ") and g.build.device_memory_bytes == 1 << 20
    assert m.library_versions["tensorrt"] == fake_tensorrt.VERSION
    assert g.parity.max_abs_prob_error < 1e-4
    assert g.parity_onnxruntime.reference == "onnxruntime-fp32" and g.parity_onnxruntime.max_abs_prob_error < 1e-5
    spec = sim.built[0]
    assert spec["strongly_typed"] and spec["workspace"] == 4 << 30
    cache = tmp_path / "engines" / ".timing-cache" / "sm89-rtx4090-trt10.13.cache"
    assert cache.read_bytes() == b"fake-timing-cache:+"
    compile_cascade(trt_config(tmp_path, tiny_dinov3_dir), progress=False)  # rebuild: the cache is read and extended
    assert cache.read_bytes() == b"fake-timing-cache:++"
    images = np.stack([resize_to(decode_image(p.read_bytes()), 224) for p in sorted(SAMPLES.glob("*.jpg"))[:5]])
    want = reference_probabilities(images, tiny_engine_dir)
    with load_engine_set(dest) as es:
        got = es.cascade.stages[0].score(list(images))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_fp16_engine_from_the_converted_graph(sim, tmp_path, tiny_dinov3_dir):
    import base64

    import onnx

    dest = compile_cascade(trt_config(tmp_path, tiny_dinov3_dir, "fp16"), progress=False)
    g = read_manifest(dest).stages[0].graphs[0]
    assert g.precision == "fp16" and g.parity.max_abs_prob_error < 1e-2
    model = onnx.load_from_string(base64.b64decode(sim.built[0]["onnx"]))
    types = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT in types  # mixed: the FP32 islands stay
    assert not list(dest.glob("*.onnx"))  # intermediates are not shipped


def test_cuda_graph_replay_equals_plain_and_arena_is_shared(sim, tmp_path, tiny_dinov3_dir):
    cfg = write_config(tmp_path / "two.toml", [
        {"name": "a", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4, "exit_low": 0.0, "exit_high": 1.0},
        {"name": "b", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 4, "seed": 1},
    ], tmp_path / "engines", target={"backend": "tensorrt", "device": "cuda"})
    dest = compile_cascade(cfg, progress=False)
    rng = np.random.default_rng(0)
    x = {"pixels": rng.integers(0, 255, (3, 224, 224, 3), dtype=np.uint8)}
    cuda = sim.cuda
    with load_engine_set(dest, warmup=False) as es:
        e1, e2 = es.engines
        with e1.slot() as s1, e2.slot() as s2:
            # one arena for this thread, shared by both engines' contexts
            assert len(es.backend.arenas._arenas) == 1 and s1.context.device_memory == s2.context.device_memory
            plain = s1.infer(x)["logit"]
            second = s1.infer(x)["logit"]  # warm: captured after this run
            launches = cuda.launches
            replay = s1.infer(x)["logit"]
            assert cuda.launches == launches + 1 and e1.stats["graph_launches"] == 1
            np.testing.assert_array_equal(plain, second)
            np.testing.assert_array_equal(plain, replay)
            other = s1.infer({"pixels": x["pixels"][:1]})["logit"]  # another batch size: plain path again
            np.testing.assert_allclose(other, plain[:1], atol=1e-6)
            # the replayed graph reads the pinned input each time: new pixels, new answers
            changed = {"pixels": 255 - x["pixels"]}
            fresh = s1.infer(changed)["logit"]
            assert not np.allclose(fresh, plain)
            assert e1.stats["graph_launches"] == 2
            s2.infer(x)  # the second engine runs in the same arena after the first
    assert cuda.device_allocated == 0  # slots, arena and engines freed on close


@pytest.mark.parametrize("how", ["end", "invalidate", "instantiate"])
def test_failed_capture_falls_back_cleans_up_and_the_process_keeps_working(monkeypatch, tmp_path, tiny_dinov3_dir, how):
    """A capture that fails (however CUDA reports it) is counted, the slot keeps the plain path
    with the same answers, and nothing is left behind: no open capture, no partial graph, no
    pending last error. Then, in the same process, a fresh compile and a fresh engine capture
    and replay normally."""
    from streetcascade import gpu

    cuda = fake_cuda.install(monkeypatch, fake_cuda.FakeCuda(fail_capture=how, failing_captures=0))
    fake_tensorrt.install(monkeypatch, fake_tensorrt.FakeTrt(cuda))
    try:
        dest = compile_cascade(trt_config(tmp_path / "a", tiny_dinov3_dir), progress=False)
        cuda.failing_captures = 1  # the next capture fails
        x = {"pixels": np.full((2, 224, 224, 3), 90, np.uint8)}
        with load_engine_set(dest, warmup=False) as es, es.engines[0].slot() as slot:
            outs = [slot.infer(x)["logit"] for _ in range(4)]
            assert es.engines[0].stats == {"graph_launches": 0, "graph_fallbacks": 1}
            for o in outs[1:]:
                np.testing.assert_array_equal(o, outs[0])
            assert cuda.last_error == fake_cuda.cudaError_t.cudaSuccess  # cleared, not left for the next check to find
            assert all(s.capturing is None for s in cuda.streams.values()) and cuda.live_graphs == 0
        assert cuda.capture_modes and set(cuda.capture_modes) == {fake_cuda.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal}
        again = compile_cascade(trt_config(tmp_path / "b", tiny_dinov3_dir), progress=False)  # a good compile after it
        with load_engine_set(again, warmup=False) as es, es.engines[0].slot() as slot:
            later = [slot.infer(x)["logit"] for _ in range(3)]
            assert es.engines[0].stats == {"graph_launches": 1, "graph_fallbacks": 0}
        for o in later:
            np.testing.assert_allclose(o, outs[0], atol=1e-6)
        assert cuda.device_allocated == 0
    finally:
        gpu.probe_gpus.cache_clear()


def test_mismatched_sm_or_tensorrt_version_is_refused(sim, tmp_path, tiny_dinov3_dir):
    import msgspec

    dest = compile_cascade(trt_config(tmp_path, tiny_dinov3_dir), progress=False)
    m = read_manifest(dest)
    write_manifest(dest, msgspec.structs.replace(m, target=msgspec.structs.replace(m.target, sm="8.6", gpu_name="NVIDIA GeForce RTX 3090")))
    with pytest.raises(EngineMismatch, match=r"SM 8\.6 \(NVIDIA GeForce RTX 3090\).*SM 8\.9 \(NVIDIA GeForce RTX 4090\)"):
        load_engine_set(dest)
    write_manifest(dest, msgspec.structs.replace(m, library_versions={**m.library_versions, "tensorrt": "10.3.0"}))
    with pytest.raises(EngineMismatch, match=r"tensorrt 10\.3\.0, this machine has 10\.13"):
        load_engine_set(dest)


def test_corrupt_plan_and_parser_errors(sim, tmp_path, tiny_dinov3_dir):
    from streetcascade.runtime.backends import get_backend
    from streetcascade.runtime.classifier import classifier_io

    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"\x00not a plan")
    backend = get_backend("tensorrt")
    with pytest.raises(EngineMismatch, match="cannot deserialize.*magic tag"):
        backend.load(str(bad), classifier_io(224, 4), backend.Options())
    sim.fail_parse = True
    with pytest.raises(CompileError, match="cannot parse.*Unsupported ONNX operator"):
        compile_cascade(trt_config(tmp_path, tiny_dinov3_dir), progress=False)


def test_gpu_budget_refusal_prints_the_table_and_respects_free_memory(sim, tmp_path, tiny_dinov3_dir):
    from streetcascade.errors import BudgetExceeded
    from streetcascade.runtime.plan import plan_memory
    from streetcascade.settings import RuntimeConfig
    from streetcascade.sizing import CUDA_CONTEXT_BYTES

    dest = compile_cascade(trt_config(tmp_path, tiny_dinov3_dir), progress=False)
    plan = plan_memory(read_manifest(dest), RuntimeConfig(slots=2))
    (line,) = plan.lines
    assert line.shared_scratch_bytes == 1 << 20 and plan.arena_bytes == 2 << 20 and plan.context_bytes == CUDA_CONTEXT_BYTES
    with pytest.raises(BudgetExceeded, match=r"(?s)stage1/classifier .*CUDA context.*DOES NOT FIT"):
        load_engine_set(dest, RuntimeConfig(budget_bytes=64 << 20))
    sim.cuda.device_allocated = sim.cuda.device_bytes - (256 << 20)  # another process holds all but 256 MiB
    with pytest.raises(BudgetExceeded, match="limited to the GPU's free memory; the configured budget is 24.00 GiB"):
        load_engine_set(dest)


def test_compile_engines_detects_the_gpu_target(sim, tmp_path, tiny_dinov3_dir, capsys, monkeypatch):
    from streetcascade.cli import main

    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 2}],
                       tmp_path / "engines", target={"backend": "onnxruntime", "device": "cpu"})
    assert main(["compile-engines", "--config", str(cfg), "-q"]) == 0  # TensorRT importable: it wins
    assert capsys.readouterr().out.strip().endswith("sm89-rtx4090")
    assert read_manifest(tmp_path / "engines" / "sm89-rtx4090").target.backend == "tensorrt"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # no TensorRT, a CPU onnxruntime, a CPU torch
    assert main(["compile-engines", "--config", str(cfg), "-q"]) == BackendUnavailable.exit_code
    err = capsys.readouterr().err
    assert "NVIDIA GeForce RTX 4090 found, but nothing here can build for it" in err and "install onnxruntime-gpu" in err


def test_ort_cuda_target_names_and_graphs(sim, tmp_path, tiny_dinov3_dir, monkeypatch):
    """ort-cuda on the simulated GPU: the target is named after the GPU and provider, the fp16
    graph is built; loading it then needs onnxruntime-gpu, which a CPU onnxruntime refuses
    instead of running on the CPU."""
    import onnx

    cfg = write_config(tmp_path / "c.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 2, "precision": "fp16"}],
                       tmp_path / "engines", target={"backend": "onnxruntime", "device": "cuda", "execution_provider": "tensorrt"})
    with pytest.raises(BackendUnavailable, match="no TensorrtExecutionProvider, CUDAExecutionProvider"):
        compile_cascade(cfg, progress=False, keep_raw=True)
    from streetcascade.compile.targets import get_target
    from streetcascade.config import load_config

    info = get_target("onnxruntime").describe(load_config(cfg))
    assert (info.name, info.execution_provider, info.sm) == ("sm89-rtx4090-ort-tensorrt", "tensorrt", "8.9")


def test_fp8_needs_calibration_data_and_modelopt(sim, tmp_path, tiny_dinov3_dir, monkeypatch):
    with pytest.raises(CompileError, match="fp8 needs calibration images"):
        compile_cascade(trt_config(tmp_path, tiny_dinov3_dir, "fp8"), progress=False)
    cfg = write_config(tmp_path / "fp8.toml", [{"name": "stage1", "family": "dinov3", "source": str(tiny_dinov3_dir), "max_batch": 2, "precision": "fp8"}],
                       tmp_path / "engines", target={"backend": "tensorrt", "device": "cuda"},
                       calibration={"data": str(SAMPLES), "labels_csv": str(tmp_path / "labels.csv"), "calibration_samples": 4})
    (tmp_path / "labels.csv").write_text("filename,label\n" + "".join(f"{p.name},{i % 2}\n" for i, p in enumerate(sorted(SAMPLES.glob("*.jpg")))))
    monkeypatch.setitem(sys.modules, "modelopt", None)
    monkeypatch.setitem(sys.modules, "modelopt.onnx", None)
    monkeypatch.setitem(sys.modules, "modelopt.onnx.quantization", None)
    with pytest.raises(BackendUnavailable, match="NVIDIA ModelOpt is not installed"):
        compile_cascade(cfg, progress=False)
