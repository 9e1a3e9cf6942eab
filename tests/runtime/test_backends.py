import json

import numpy as np
import pytest
from streetcascade.runtime import backends
from streetcascade.runtime.backends import backend_names, get_backend
from streetcascade.runtime.backends.fake import ENGINE_KIND, FakeEngine
from streetcascade.runtime.backends.onnxruntime import OrtOptions, providers_for

from streetcascade.errors import (
    BackendUnavailable,
    BadInput,
    ConfigError,
    EngineMismatch,
    InferenceError,
)
from streetcascade.manifest import read_manifest
from streetcascade.settings import RuntimeConfig


def test_registry_names_and_unknown_backend():
    assert {"onnxruntime", "fake"} <= set(backend_names())
    with pytest.raises(ConfigError, match="unknown backend 'tensorrtx'"):
        get_backend("tensorrtx")


def test_backend_whose_library_is_missing_is_unavailable(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS.entries, "missing-lib", "streetcascade.runtime.backends.no_such_module:Backend")
    with pytest.raises(BackendUnavailable, match="cannot be imported"):
        get_backend("missing-lib")


def test_cuda_device_without_cuda_provider_is_unavailable():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(BackendUnavailable, match="no CUDAExecutionProvider"):
        providers_for(OrtOptions(device="cuda"))
    with pytest.raises(BackendUnavailable, match="no TensorrtExecutionProvider, CUDAExecutionProvider"):
        providers_for(OrtOptions(device="cuda", execution_provider="tensorrt"))
    with pytest.raises(BadInput, match="unknown device"):
        providers_for(OrtOptions(device="tpu"))


def test_gpu_session_settings_are_built_without_a_gpu(tmp_path):
    """onnxruntime-gpu silently runs on the CPU when a CUDA library is missing, unless told not to."""
    from streetcascade.manifest import TargetInfo
    from streetcascade.runtime.backends.onnxruntime import OnnxRuntimeBackend, gpu_providers, session_options

    so = session_options(OrtOptions(device="cuda"))
    assert so.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    with pytest.raises(RuntimeError):  # not set at all on the CPU
        session_options(OrtOptions()).get_session_config_entry("session.disable_cpu_ep_fallback")
    graph = str(tmp_path / "sm89-rtx4090-ort-tensorrt" / "stage1.classifier.fp16.onnx")
    (name, cuda), = gpu_providers(OrtOptions(device="cuda"), graph)
    assert name == "CUDAExecutionProvider" and cuda["enable_cuda_graph"] == "1" and cuda["device_id"] == "0"
    assert gpu_providers(OrtOptions(device="cuda", cuda_graphs=False, gpu_index=1), graph)[0][1] | {} == {
        **cuda, "enable_cuda_graph": "0", "device_id": "1"}
    (trt_name, trt), (cuda_name, _) = gpu_providers(OrtOptions(device="cuda", execution_provider="tensorrt"), graph)
    assert (trt_name, cuda_name) == ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # never the CPU provider
    cache = str(tmp_path / "sm89-rtx4090-ort-tensorrt" / "ort-trt-cache")
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_engine_cache_path"] == cache and trt["trt_timing_cache_path"] == cache
    target = TargetInfo(name="x", backend="onnxruntime", device="cuda", arch="x86_64", sm="8.9", execution_provider="tensorrt")
    options = OnnxRuntimeBackend.options_for_target(RuntimeConfig(cuda_graphs=False), target)
    assert (options.device, options.execution_provider, options.optimize, options.cuda_graphs) == ("cuda", "tensorrt", True, False)


def test_options_come_from_the_runtime_settings():
    backend = get_backend("onnxruntime")
    options = backend.options_for(RuntimeConfig(intra_op_threads=3, spin_wait=False), "cpu")
    assert options == OrtOptions(device="cpu", intra_op_threads=3, spin_wait=False)


def _ort_engine(engine_dir):
    graph = read_manifest(engine_dir).stages[0].graphs[0]
    backend = get_backend("onnxruntime")
    return backend.load(str(engine_dir / graph.file), graph.io, backend.options_for(RuntimeConfig(), "cpu"))


def test_slot_checks_inputs_and_reuses_its_output_buffers(tiny_engine_dir):
    with _ort_engine(tiny_engine_dir) as engine, engine.slot() as slot:
        assert engine.io.max_batch == 4
        buffer = slot.output_buffers["logit"]
        assert buffer.shape == (4,)  # allocated once, at max_batch
        x = np.zeros((3, 224, 224, 3), np.uint8)
        first = slot.infer({"pixels": x})["logit"]
        assert first.shape == (3,) and first.dtype == np.float32
        second = slot.infer({"pixels": x[:1]})["logit"]
        # The engine wrote into the same buffer both times (a leading view of it), and callers got copies.
        assert slot.output_buffers["logit"] is buffer and buffer[0] == second[0]
        assert not np.shares_memory(first, buffer) and not np.shares_memory(second, buffer)
        assert second.shape == (1,) and np.allclose(first[:1], second, atol=1e-5)
        with pytest.raises(BadInput, match="dtype float32"):
            slot.infer({"pixels": x.astype(np.float32)})
        with pytest.raises(BadInput, match="shape"):
            slot.infer({"pixels": np.zeros((1, 200, 224, 3), np.uint8)})
        with pytest.raises(BadInput, match="missing input"):
            slot.infer({"image": x})
        with pytest.raises(BadInput, match="1..4"):
            slot.infer({"pixels": np.zeros((5, 224, 224, 3), np.uint8)})


def test_slot_logits_runs_any_count_in_max_batch_chunks(tiny_engine_dir):
    images = np.random.default_rng(0).integers(0, 256, (9, 224, 224, 3), dtype=np.uint8)
    with _ort_engine(tiny_engine_dir) as engine, engine.slot() as slot:
        got = slot.logits(images)  # 4 + 4 + 1
        one_by_one = np.concatenate([slot.infer({"pixels": images[i : i + 1]})["logit"] for i in range(9)])
    assert got.shape == (9,) and got.dtype == np.float64
    np.testing.assert_allclose(got, one_by_one, atol=1e-6)


def test_slot_logits_refuses_one_value_for_a_whole_batch():
    """A graph that reduced over the batch axis (OpenVINO's misread ReduceLogSumExp) returns one
    value for N images; numpy would broadcast it to every image: refused instead."""
    from streetcascade.runtime.backends.fake import FakeSlot

    class BatchReducingSlot(FakeSlot):
        def infer(self, feeds):
            logits = super().infer(feeds)["logit"]
            return {"logit": np.asarray(np.log(np.exp(logits).sum()), dtype=np.float32)}  # shape (), as OpenVINO gave

    engine = FakeEngine(max_batch=4)
    images = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    slot = BatchReducingSlot(engine)
    assert slot.logits(images[:1]).shape == (1,)  # one image, one value: nothing to tell apart
    with pytest.raises(InferenceError, match=r"shape \[\] for a batch of 3 images"):
        slot.logits(images)

def test_ort_memory_is_measured_on_a_fresh_engine_only(tiny_engine_dir):
    graph = read_manifest(tiny_engine_dir).stages[0].graphs[0]
    with _ort_engine(tiny_engine_dir) as engine:
        memory = engine.memory()
        assert memory.weights_bytes >= graph.size_bytes and memory.method == "rss-peak"
        assert memory.host_buffers_bytes == 4 * 4  # one float32 logit per image at max_batch 4
        assert engine.memory() == memory  # measured once
    with _ort_engine(tiny_engine_dir) as engine:
        with engine.slot() as slot:
            slot.infer({"pixels": np.zeros((1, 224, 224, 3), np.uint8)})
        with pytest.raises(InferenceError, match="before the engine's first run"):
            engine.memory()


def test_fake_backend_loads_its_engine_file_and_refuses_others(tmp_path):
    io = FakeEngine().io
    good = tmp_path / "e.json"
    good.write_text(json.dumps({"kind": ENGINE_KIND, "latency_ms": 0.0}))
    backend = get_backend("fake")
    with backend.load(str(good), io, backend.options_for(RuntimeConfig(), "cpu")) as engine, engine.slot() as slot:
        bright = np.full((2, 224, 224, 3), 250, np.uint8)
        assert slot.logits(bright).tolist() == pytest.approx([(250 - 127.5) / 32] * 2)
    for text in ("not json", json.dumps({"kind": "other"}), json.dumps({"kind": ENGINE_KIND, "surprise": 1})):
        good.write_text(text)
        with pytest.raises(EngineMismatch):
            backend.load(str(good), io, backend.options_for(RuntimeConfig(), "cpu"))


def test_a_gpu_session_never_runs_silently_on_the_cpu(tiny_engine_dir, monkeypatch):
    """With the CUDA provider asked for but not really there, onnxruntime would quietly use the
    CPU; our session options make it refuse (a real CPU onnxruntime, its provider check faked)."""
    import onnxruntime as ort

    graph = read_manifest(tiny_engine_dir).stages[0].graphs[0]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    backend = get_backend("onnxruntime")
    with pytest.raises(EngineMismatch, match="fallback to CPU EP has been explicitly disabled"):
        backend.load(str(tiny_engine_dir / graph.file), graph.io, backend.options_for(RuntimeConfig(), "cuda"))
