import numpy as np
import pytest

from streetcascade.errors import BackendUnavailable, BadInput, ConfigError
from streetcascade.manifest import read_manifest
from streetcascade.runtime.backends import backend_names, get_backend, register_backend
from streetcascade.runtime.backends.onnxruntime import providers_for


def test_registry_names_and_unknown_backend():
    assert {"onnxruntime", "fake"} <= set(backend_names())
    with pytest.raises(ConfigError, match="unknown backend 'tensorrtx'"):
        get_backend("tensorrtx")


def test_backend_whose_library_is_missing_is_unavailable():
    register_backend("missing-lib", "streetcascade.runtime.backends.no_such_module:Backend")
    with pytest.raises(BackendUnavailable, match="cannot be imported"):
        get_backend("missing-lib")


def test_cuda_device_without_cuda_provider_is_unavailable():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(BackendUnavailable, match="no CUDA provider"):
        providers_for("cuda")
    with pytest.raises(BadInput, match="unknown device"):
        providers_for("tpu")


def test_slot_checks_inputs_and_reuses_output_buffers(tiny_engine_dir):
    graph = read_manifest(tiny_engine_dir).stages[0].graphs[0]
    engine = get_backend("onnxruntime").load(str(tiny_engine_dir / graph.file), graph.inputs, graph.outputs, {})
    with engine.slot() as slot:
        x = np.zeros((3, 224, 224, 3), np.uint8)
        first = slot.infer({"pixels": x})["logit"]
        assert first.shape == (3,) and first.dtype == np.float32
        second = slot.infer({"pixels": x})["logit"]
        assert second is not first and np.array_equal(first, second)  # callers get copies
        assert slot.infer({"pixels": x[:1]})["logit"].shape == (1,)
        with pytest.raises(BadInput, match="dtype float32"):
            slot.infer({"pixels": x.astype(np.float32)})
        with pytest.raises(BadInput, match="shape"):
            slot.infer({"pixels": np.zeros((1, 200, 224, 3), np.uint8)})
        with pytest.raises(BadInput, match="missing input"):
            slot.infer({"image": x})
    engine.close()
