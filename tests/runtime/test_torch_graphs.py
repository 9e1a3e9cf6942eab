"""CUDA graph capture of PyTorch work (the AOTInductor backend's) when capture fails: the
stand-in (tests/fake_torch_cuda.py) reproduces PyTorch's bookkeeping as its sources have it,
including the H200 symptom (after a failed capture, the next random op, e.g. the next
AOTInductor compile's autotuner, fails with "Offset increment outside graph capture").
On a GPU, tests/gpu/test_gpu.py repeats this with the real PyTorch."""

import pytest

from fake_torch_cuda import FakeGpu
from streetcascade.runtime.backends import torch_graphs
from streetcascade.runtime.backends.torch_graphs import TorchGraphCapture


def _setup(version):
    gpu = FakeGpu(version)
    torch = gpu.module()
    stream = torch.cuda.Stream()
    return gpu, torch, stream, TorchGraphCapture(torch, torch.device("cuda:0"), stream)


def test_the_stand_in_reproduces_the_h200_failure():
    """Guard against a vacuous stand-in: capture_begin / failing model / capture_end without
    the repair leaves PyTorch 2.11's generator refusing every later random op."""
    gpu, torch, stream, _ = _setup("2.11")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        graph.capture_begin()
        with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
            gpu.forbidden_under_capture()
        with pytest.raises(RuntimeError, match="previous error during capture"):
            graph.capture_end()
    del graph
    with pytest.raises(RuntimeError, match="Offset increment outside graph capture"):
        torch.empty(4, device="cuda").uniform_()
    assert gpu.pools_routing  # and the allocator still routes to the dead graph's pool


@pytest.mark.parametrize("version", ["2.11", "2.13"])
def test_failed_capture_leaves_the_process_usable_and_a_later_capture_works(version, monkeypatch):
    gpu, torch, stream, capturer = _setup(version)
    cleared = []
    monkeypatch.setattr(torch_graphs, "clear_last_cuda_error", lambda: cleared.append(1) or True)
    box = {"x": 1.0}

    def model():
        out = {}
        gpu.run(lambda: out.update(y=box["x"] * 2))
        return out

    def model_that_syncs():  # what the multi-threaded AOTInductor runner does under capture
        gpu.forbidden_under_capture()
        return model()

    graph, out, why = capturer.capture(model_that_syncs)
    assert graph is None and out is None and "model under capture" in why and "not permitted when stream is capturing" in why
    assert stream.capture is None and not gpu.pools_routing and not gpu.generator_marks and gpu.graphs_alive == 0
    assert cleared and stream.synchronized >= 2
    assert capturer.repairs == (1 if version == "2.11" else 0)  # 2.13 drops the state with the graph object
    torch.empty(4, device="cuda").uniform_()  # the next compile's random draws work
    graph, out, why = capturer.capture(model)
    assert why == "" and graph is not None and out == {}  # captured, not run
    box["x"] = 3.0
    graph.replay()
    assert out == {"y": 6.0} and gpu.replays == 1
    assert gpu.modes and set(gpu.modes) == {"thread_local"}


def test_a_python_error_under_capture_discards_the_partial_graph():
    """The capture itself ended cleanly (nothing CUDA refused), the model raised: no graph is
    kept, nothing needs repair, and the pool is shared with the next capture."""
    gpu, torch, stream, capturer = _setup("2.11")

    def broken():
        gpu.run(lambda: None)
        raise ValueError("bad shape")

    graph, out, why = capturer.capture(broken)
    assert graph is None and "ValueError: bad shape" in why and capturer.repairs == 0 and gpu.graphs_alive == 0
    pool = capturer.pool
    graph, out, _ = capturer.capture(lambda: {})
    assert graph is not None and graph.pool == pool
