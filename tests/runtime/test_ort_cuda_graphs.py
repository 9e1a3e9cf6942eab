"""ONNX Runtime's CUDA-graph path (runtime/backends/onnxruntime.py `OrtGpuSlot`) without a GPU:
a stand-in session that behaves as ORT documents its CUDA graphs (a graph per `gpu_graph_id`,
captured on the first run of that id with the addresses then bound, replayed afterwards
whatever is bound; graph capture refused at session creation when a node is off the CUDA
provider). onnxruntime-gpu (256 MB) has never reached a GPU machine of this project: the real
run waits for one (tests/gpu/test_gpu.py, `ort-cuda`)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from streetcascade.runtime.backends import onnxruntime as ort_backend
from streetcascade.runtime.classifier import classifier_io

REFUSAL = ("This session cannot use the graph capture feature as requested by the user as all compute graph nodes have not been "
           "partitioned to the CUDA EP.")


class FakeValue:
    """A device OrtValue: a fixed 'address' (the array object) updated in place."""

    def __init__(self, shape, dtype):
        self.array = np.zeros(shape, dtype)

    def update_inplace(self, x):
        self.array[...] = x

    def numpy(self):
        return self.array.copy()


class FakeBinding:
    def __init__(self):
        self.inputs, self.outputs = {}, {}

    def bind_ortvalue_input(self, name, value):
        self.inputs[name] = value

    def bind_ortvalue_output(self, name, value):
        self.outputs[name] = value

    def clear_binding_inputs(self):
        self.inputs = {}

    def clear_binding_outputs(self):
        self.outputs = {}


class FakeSession:
    created: list = []
    refuse_graphs = False

    def __init__(self, path, sess_options=None, providers=()):
        cuda = dict(providers)["CUDAExecutionProvider"]
        FakeSession.created.append(cuda)
        if cuda["enable_cuda_graph"] == "1" and FakeSession.refuse_graphs:
            raise RuntimeError(REFUSAL)
        self.graphs_on = cuda["enable_cuda_graph"] == "1"
        self.graphs: dict[str, tuple] = {}  # gpu_graph_id -> the (input, output) values captured
        self.inside = 0
        self.overlap = False

    def get_inputs(self):
        return [type("I", (), {"name": "pixels"})()]

    def get_outputs(self):
        return [type("O", (), {"name": "logit"})()]

    def io_binding(self):
        return FakeBinding()

    def run_with_iobinding(self, binding, run_options):
        self.inside += 1
        self.overlap |= self.inside > 1
        try:
            gid = run_options.entries.get("gpu_graph_id")
            x_val, y_val = binding.inputs["pixels"], binding.outputs["logit"]
            if self.graphs_on and gid is not None:
                x_val, y_val = self.graphs.setdefault(gid, (x_val, y_val))  # a replay reads what capture bound
            y_val.array[...] = x_val.array.reshape(len(x_val.array), -1).mean(axis=1)
        finally:
            self.inside -= 1


class FakeRunOptions:
    def __init__(self):
        self.entries = {}

    def add_run_config_entry(self, key, value):
        self.entries[key] = value


@pytest.fixture
def fake_ort(monkeypatch):
    ort = ort_backend.ort
    FakeSession.created, FakeSession.refuse_graphs = [], False
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(ort, "RunOptions", FakeRunOptions)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_shape_and_type", staticmethod(lambda shape, dtype, device, index: FakeValue(shape, dtype)))
    monkeypatch.setattr(ort_backend, "free_bytes", lambda index=0: 0)
    return FakeSession


def _engine(tmp_path, cuda_graphs=True):
    graph = tmp_path / "stage1.onnx"
    graph.write_bytes(b"stand-in")
    options = ort_backend.OrtOptions(device="cuda", cuda_graphs=cuda_graphs)
    return ort_backend.OrtEngine(str(graph), classifier_io(8, 4), options)


def _images(value, batch=2):
    return {"pixels": np.full((batch, 8, 8, 3), value, np.uint8)}


def test_each_slot_has_its_own_graphs_and_runs_are_serialised(fake_ort, tmp_path):
    engine = _engine(tmp_path)
    assert engine.graphs_enabled and isinstance(engine.run_lock, type(threading.Lock()))
    a, b = engine.slot(), engine.slot()
    assert a.graph_id(2) != b.graph_id(2) and a.graph_id(1) != a.graph_id(2)
    assert a.infer(_images(10))["logit"].tolist() == [10.0, 10.0]
    # slot b's own buffers: with one id per batch size shared by slots, b would replay a's graph and read a's input
    assert b.infer(_images(20))["logit"].tolist() == [20.0, 20.0]
    assert a.infer(_images(30))["logit"].tolist() == [30.0, 30.0]  # a replays its graph with its new input
    threads = [threading.Thread(target=lambda s=s: [s.infer(_images(5)) for _ in range(50)]) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not engine.session.overlap


def test_refused_graph_capture_falls_back_to_plain_runs(fake_ort, caplog, tmp_path):
    fake_ort.refuse_graphs = True
    engine = _engine(tmp_path)
    assert [c["enable_cuda_graph"] for c in fake_ort.created] == ["1", "0"]
    assert not engine.graphs_enabled and "CUDA graphs refused by onnxruntime" in engine.graphs_note
    assert "partitioned to the CUDA EP" in caplog.text
    slot = engine.slot()
    assert slot.infer(_images(7))["logit"].tolist() == [7.0, 7.0]
    assert "gpu_graph_id" not in slot._buffers(2)[3].entries


def test_other_load_errors_are_not_mistaken_for_a_refusal(fake_ort, monkeypatch, tmp_path):
    from streetcascade.errors import EngineMismatch

    def broken(*a, **k):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : bad model")

    monkeypatch.setattr(ort_backend.ort, "InferenceSession", broken)
    with pytest.raises(EngineMismatch, match="INVALID_GRAPH"):
        _engine(tmp_path)
