"""The OpenVINO CPU target and backend: IR pair + manifest, parity through the real loading
code, fp32 that stays f32 on a bf16 CPU, bf16 and NNCF INT8 gated against FP32, damaged or
foreign files refused, and `backend = "auto"` choosing between ONNX Runtime and OpenVINO by a
side-by-side measurement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from streetcascade.errors import BackendUnavailable, CompileError, ConfigError, EngineMismatch

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from streetcascade.calibration.synthetic import write_scene_folder

    return write_scene_folder(tmp_path_factory.mktemp("scenes") / "data", 30, seed=5, size=(160, 120))


def _config(tmp_path, source, precision="fp32", backend="openvino", calibration=None, name="c.toml"):
    from support import write_config

    stages = [{"name": "stage1", "family": "dinov3", "source": str(source), "precision": precision, "max_batch": 4}]
    extra = {"calibration": calibration} if calibration is not None else {}
    return write_config(tmp_path / name, stages, tmp_path / "engines", target={"backend": backend, "device": "cpu"}, **extra)


@pytest.fixture(scope="module")
def ov_engine_dir(tmp_path_factory, tiny_dinov3_dir) -> Path:
    from streetcascade.compile.pipeline import compile_cascade

    return compile_cascade(_config(tmp_path_factory.mktemp("ov"), tiny_dinov3_dir), progress=False)


def _ir_precision(xml: Path) -> str:
    from streetcascade.runtime.backends.openvino import PRECISION_KEY, core

    return core().read_model(str(xml)).get_rt_info(PRECISION_KEY).astype(str)


def test_fp32_ir_pair_with_manifest_and_parity(ov_engine_dir, tiny_engine_dir):
    from streetcascade.manifest import read_manifest
    from streetcascade.runtime import load_engine_set

    m = read_manifest(ov_engine_dir)
    graph = m.stages[0].graphs[0]
    assert ov_engine_dir.name.endswith("-openvino") and m.target.backend == "openvino" and "openvino" in m.library_versions
    assert graph.file == "stage1.classifier.fp32.xml" and [c.file for c in graph.companions] == ["stage1.classifier.fp32.bin"]
    assert graph.companions[0].size_bytes == (ov_engine_dir / graph.companions[0].file).stat().st_size > graph.size_bytes / 10
    assert graph.parity.reference.startswith("pytorch") and graph.parity.max_abs_prob_error < 1e-4 and graph.memory.method == "rss-peak"
    assert _ir_precision(ov_engine_dir / graph.file) == "f32"
    assert sorted(p.name for p in ov_engine_dir.iterdir()) == ["manifest.json", "stage1.classifier.fp32.bin", "stage1.classifier.fp32.xml"]
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    with load_engine_set(ov_engine_dir) as ours, load_engine_set(tiny_engine_dir) as ort_set:
        p_ov = [ours.cascade.classify(x).probability for x in images]
        p_ort = [ort_set.cascade.classify(x).probability for x in images]
    np.testing.assert_allclose(p_ov, p_ort, atol=1e-4)  # same weights, two runtimes


def test_fp32_engine_is_compiled_f32_even_where_bf16_is_the_default(ov_engine_dir):
    from streetcascade.manifest import read_manifest
    from streetcascade.runtime.backends import get_backend
    from streetcascade.settings import RuntimeConfig

    graph = read_manifest(ov_engine_dir).stages[0].graphs[0]
    backend = get_backend("openvino")
    with backend.load(str(ov_engine_dir / graph.file), graph.io, backend.options_for(RuntimeConfig(intra_op_threads=1), "cpu")) as engine:
        assert engine.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
        assert engine.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        with engine.slot() as slot:
            out = slot.infer({"pixels": np.zeros((2, 224, 224, 3), np.uint8)})
        assert out["logit"].shape[0] == 2 and out["logit"].dtype == np.float32
        with engine.slot() as slot, pytest.raises(Exception, match="dtype"):
            slot.infer({"pixels": np.zeros((1, 224, 224, 3), np.float32)})


def test_gated_engines_run_batch_one_through_a_fixed_shape_copy(ov_engine_dir, tmp_path):
    import msgspec

    import streetcascade.runtime.backends.openvino as ovb
    from streetcascade.manifest import read_manifest
    from streetcascade.settings import RuntimeConfig

    graph = read_manifest(ov_engine_dir).stages[0].graphs[0]
    backend = ovb.OpenVinoBackend()
    options = backend.options_for(RuntimeConfig(intra_op_threads=1), "cpu")
    with backend.load(str(ov_engine_dir / graph.file), graph.io, options) as engine:
        assert engine.single is None and engine.warmup_batches() == (1,)  # fp32 engines keep exact f32 kernels: one dynamic graph
    # The same IR marked as the target marks its gated (bf16, INT8) engines.
    model = ovb.core().read_model(str(ov_engine_dir / graph.file))
    model.set_rt_info("true", ovb.FIXED_BATCH1_KEY)
    ov.save_model(model, str(tmp_path / "g.xml"), compress_to_fp16=False)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    with backend.load(str(tmp_path / "g.xml"), graph.io, options) as engine:
        assert graph.io.max_batch == 4
        assert list(engine.single.inputs[0].get_shape()) == [1, 224, 224, 3] and engine.single.get_property("INFERENCE_NUM_THREADS") == 1
        assert engine.compiled.inputs[0].get_partial_shape()[0].is_dynamic  # batches of 2..4
        account = engine.memory()  # both copies' first runs
        with engine.slot() as slot:
            one = [slot.infer({"pixels": images[i:i + 1]})["logit"] for i in range(3)]
            three = slot.infer({"pixels": images})["logit"]
    np.testing.assert_allclose(np.concatenate(one), three, rtol=1e-3, atol=1e-3)  # two plans of the same graph
    assert account.weights_bytes > 0 and account.activations_bytes > 0
    # A graph that only ever runs batch 1 keeps just the fixed-shape copy.
    with backend.load(str(tmp_path / "g.xml"), msgspec.structs.replace(graph.io, max_batch=1), options) as engine:
        assert engine.compiled is None and engine.single is not None
        with engine.slot() as slot:
            np.testing.assert_allclose(slot.infer({"pixels": images[:1]})["logit"], one[0], rtol=1e-5, atol=1e-5)
            with pytest.raises(Exception, match="batch of 2"):
                slot.infer({"pixels": images[:2]})


def test_gate_logits_at_batch_one_and_max_batch(tiny_engine_dir):
    from streetcascade.compile.accuracy_gate import engine_logits, engine_logits_each_batch
    from streetcascade.manifest import read_manifest

    graph = read_manifest(tiny_engine_dir).stages[0].graphs[0]
    images = np.random.default_rng(4).integers(0, 256, (6, 224, 224, 3), dtype=np.uint8)
    one, many = engine_logits_each_batch(tiny_engine_dir / graph.file, graph.io, images)
    assert graph.io.max_batch > 1 and one.shape == many.shape == (6,)
    np.testing.assert_allclose(one, many, atol=1e-4)
    np.testing.assert_allclose(many, engine_logits(tiny_engine_dir / graph.file, graph.io, images), atol=1e-6)


def test_damaged_or_missing_weights_are_refused(ov_engine_dir, tmp_path):
    from streetcascade.runtime import load_engine_set

    copy = tmp_path / "set"
    shutil.copytree(ov_engine_dir, copy)
    bin_file = copy / "stage1.classifier.fp32.bin"
    data = bytearray(bin_file.read_bytes())
    data[100] ^= 0xFF
    bin_file.write_bytes(bytes(data))
    with pytest.raises(EngineMismatch, match="sha256"):
        load_engine_set(copy)
    bin_file.unlink()
    with pytest.raises(EngineMismatch, match="missing"):
        load_engine_set(copy)


def test_ir_not_built_by_us_or_not_an_ir_is_refused(ov_engine_dir, tmp_path):
    from streetcascade.manifest import read_manifest
    from streetcascade.runtime.backends import get_backend
    from streetcascade.settings import RuntimeConfig

    graph = read_manifest(ov_engine_dir).stages[0].graphs[0]
    backend = get_backend("openvino")
    options = backend.options_for(RuntimeConfig(), "cpu")
    # The same IR without the rt_info our target writes (as any other OpenVINO tool would save it).
    text = (ov_engine_dir / graph.file).read_text()
    start, end = text.index("<streetcascade>"), text.index("</streetcascade>") + len("</streetcascade>")
    foreign = tmp_path / "foreign.xml"
    foreign.write_text(text[:start] + text[end:])
    shutil.copyfile(ov_engine_dir / graph.companions[0].file, foreign.with_suffix(".bin"))
    with pytest.raises(EngineMismatch, match="inference_precision"):
        backend.load(str(foreign), graph.io, options)
    import msgspec

    renamed = msgspec.structs.replace(graph.io, outputs=[msgspec.structs.replace(graph.io.outputs[0], name="probability")])
    with pytest.raises(EngineMismatch, match="the manifest says"):
        backend.load(str(ov_engine_dir / graph.file), renamed, options)
    junk = tmp_path / "junk.xml"
    junk.write_text("<net>not really</net>")
    with pytest.raises(EngineMismatch, match="cannot read"):
        backend.load(str(junk), graph.io, options)
    with pytest.raises(BackendUnavailable, match="runs on the CPU"):
        backend.options_for(RuntimeConfig(), "cuda")


def test_bf16_without_bf16_in_the_cpu_is_refused_at_compile_and_load(tmp_path, tiny_dinov3_dir, scenes, monkeypatch, ov_engine_dir):
    import streetcascade.runtime.backends.openvino as ovb
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.manifest import read_manifest
    from streetcascade.settings import RuntimeConfig

    monkeypatch.setattr(ovb, "cpu_features", lambda: ("avx2", "avx512f"))
    with pytest.raises(CompileError, match="bf16 needs a CPU with avx512_bf16 or amx_bf16"):
        compile_cascade(_config(tmp_path, tiny_dinov3_dir, "bf16", calibration={"data": str(scenes)}), progress=False)
    with pytest.raises(ConfigError, match="bf16 is gated against FP32 on labelled data"):
        compile_cascade(_config(tmp_path, tiny_dinov3_dir, "bf16", name="d.toml"), progress=False)
    # A bf16 engine (IR marked bf16) on such a CPU: refused at load rather than silently run in f32.
    graph = read_manifest(ov_engine_dir).stages[0].graphs[0]
    model = ovb.core().read_model(str(ov_engine_dir / graph.file))
    model.set_rt_info("bf16", ovb.PRECISION_KEY)
    ov.save_model(model, str(tmp_path / "b.xml"), compress_to_fp16=False)
    backend = ovb.OpenVinoBackend()
    with pytest.raises(EngineMismatch, match="bf16 engine"):
        backend.load(str(tmp_path / "b.xml"), graph.io, backend.options_for(RuntimeConfig(), "cpu"))


def _has_bf16() -> bool:
    from streetcascade.runtime.backends.openvino import has_bf16

    return has_bf16()


@pytest.mark.skipif(not _has_bf16(), reason="this CPU has no bf16 (avx512_bf16 / amx_bf16)")
def test_bf16_is_gated_against_fp32_and_runs_bf16(tmp_path, tiny_dinov3_dir, scenes):
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.manifest import read_manifest
    from streetcascade.runtime import load_engine_set

    cal = {"data": str(scenes), "validation_samples": 24}
    dest = compile_cascade(_config(tmp_path, tiny_dinov3_dir, "bf16", calibration=cal), progress=False)
    graph = read_manifest(dest).stages[0].graphs[0]
    gate = graph.accuracy_gate
    assert graph.precision == "bf16" and gate is not None and gate.passed and gate.reference == "openvino-fp32"
    assert gate.method == "bf16" and gate.n_calibration == 0 and gate.n_images == 24 and gate.quantized_nodes > 0
    assert 0 < gate.max_abs_prob_error < 0.05  # bf16 moves the output, a little
    assert _ir_precision(dest / graph.file) == "bf16"
    assert not [p for p in dest.iterdir() if "fp32-ref" in p.name]
    with load_engine_set(dest) as es:
        assert es.engines[0].compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        decision = es.cascade.classify(np.zeros((224, 224, 3), np.uint8))
    assert decision.stage == "stage1" and 0.0 <= decision.probability <= 1.0


def test_nncf_int8_gated_pass_and_refusal(tmp_path, tiny_dinov3_dir, scenes):
    pytest.importorskip("nncf")
    from streetcascade.compile.accuracy_gate import AccuracyGateFailed
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.manifest import read_manifest
    from streetcascade.runtime import load_engine_set

    loose = {"data": str(scenes), "calibration_samples": 8, "validation_samples": 16, "max_flip_rate": 1.0, "max_mcc_drop": 2.0,
             "max_accuracy_drop": 1.0, "max_auc_drop": 1.0}
    dest = compile_cascade(_config(tmp_path, tiny_dinov3_dir, "int8-static", calibration=loose), progress=False)
    graph = read_manifest(dest).stages[0].graphs[0]
    gate = graph.accuracy_gate
    remainder = "bf16" if _has_bf16() else "f32"  # what NNCF leaves unquantized runs in bf16 where the CPU has it
    assert gate.passed and gate.method == f"nncf-transformer-{remainder}" and gate.n_calibration == 8 and gate.quantized_nodes > 0
    assert gate.reference == "openvino-fp32" and _ir_precision(dest / graph.file) == remainder
    from streetcascade.runtime.backends.openvino import core

    model = core().read_model(str(dest / graph.file))
    assert "FakeQuantize" in {op.get_type_name() for op in model.get_ops()}
    # The patch embedding and the head stay float: no FakeQuantize feeds them.
    from streetcascade.compile.targets.openvino import edge_layers

    edges = [op for op in model.get_ordered_ops() if op.get_friendly_name() in edge_layers(model)]
    assert [op.get_type_name() for op in edges] == ["Convolution", "MatMul"]
    for op in edges:
        assert all(op.input_value(i).get_node().get_type_name() != "FakeQuantize" for i in range(2))
    with load_engine_set(dest) as es:  # batch 1 through the fixed-shape copy the gate measured
        engine = es.engines[0]
        assert engine.single is not None and engine.compiled is not None
        assert engine.warmup_batches() == (1, 4) and engine.runs == 2  # the loader warmed both plans

    strict = {**loose, "max_prob_error": 1e-9}
    cfg = _config(tmp_path / "strict", tiny_dinov3_dir, "int8-static", calibration=strict)
    with pytest.raises(AccuracyGateFailed, match="int8-static engine refused by the accuracy gate.*max probability error"):
        compile_cascade(cfg, progress=False)
    engines = tmp_path / "strict" / "engines"
    assert not (engines / "cpu-x86_64-openvino").exists()
    assert json.loads((engines / "cpu-x86_64-openvino.gate-failed.json").read_text())["reference"] == "openvino-fp32"


def test_auto_times_both_targets_and_keeps_one(tmp_path, tiny_dinov3_dir):
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.manifest import read_manifest
    from streetcascade.runtime import load_engine_set

    dest = compile_cascade(_config(tmp_path, tiny_dinov3_dir, backend="auto"), progress=False)
    m = read_manifest(dest)
    sel = m.target.selection
    assert dest.name == "cpu-x86_64" and sel is not None and sel.stage == "stage1" and sel.runs > 0
    assert set(sel.median_ms) == {"onnxruntime", "openvino"} and all(v > 0 for v in sel.median_ms.values())
    winner = min(sel.median_ms, key=sel.median_ms.get)
    assert m.target.backend == winner
    graph = m.stages[0].graphs[0]
    kept = {graph.file, *(c.file for c in graph.companions), "manifest.json"}
    assert {p.name for p in dest.iterdir()} == kept  # the loser's files are gone
    with load_engine_set(dest) as es:
        assert es.cascade.classify(np.zeros((224, 224, 3), np.uint8)).stage == "stage1"


def test_auto_keeps_the_candidate_that_builds_when_another_refuses(tmp_path, tiny_dinov3_dir, monkeypatch):
    """A candidate that cannot build the stage (a gate, a graph its library misreads) is dropped
    with its reason, not the whole compile; its files do not reach the engine set."""
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.compile.targets import openvino as ov_target
    from streetcascade.manifest import read_manifest

    def refuse(self, job):
        job.out.write_bytes(b"half-written")  # what a failed build may leave behind
        raise CompileError("OpenVINO misreads node X (test)")

    monkeypatch.setattr(ov_target.OpenVinoTarget, "build", refuse)
    dest = compile_cascade(_config(tmp_path, tiny_dinov3_dir, backend="auto"), progress=False)
    m = read_manifest(dest)
    sel = m.target.selection
    assert m.target.backend == "onnxruntime" and sel.runs == 0 and sel.median_ms == {}
    assert "could not build stage1: OpenVINO misreads node X" in sel.skipped["openvino"]
    graph = m.stages[0].graphs[0]
    assert {p.name for p in dest.iterdir()} == {graph.file, *(c.file for c in graph.companions), "manifest.json"}


def test_auto_raises_when_no_candidate_builds(tmp_path, tiny_dinov3_dir, monkeypatch):
    from streetcascade.compile.pipeline import compile_cascade
    from streetcascade.compile.targets import onnxruntime as ort_target
    from streetcascade.compile.targets import openvino as ov_target

    def refuse(self, job):
        raise CompileError(f"{type(self).__name__} refuses (test)")

    monkeypatch.setattr(ov_target.OpenVinoTarget, "build", refuse)
    monkeypatch.setattr(ort_target.OnnxRuntimeTarget, "build", refuse)
    with pytest.raises(CompileError, match="refuses"):
        compile_cascade(_config(tmp_path, tiny_dinov3_dir, backend="auto"), progress=False)
    assert not (tmp_path / "engines" / "cpu-x86_64").exists() and not list((tmp_path / "engines").glob("*building*"))


def test_auto_with_a_precision_only_one_target_builds(tmp_path, tiny_dinov3_dir):
    from streetcascade.compile.pipeline import auto_candidates
    from streetcascade.config import load_config

    config = load_config(_config(tmp_path, tiny_dinov3_dir, "int8-dynamic", backend="auto"))
    ok, skipped = auto_candidates(config)
    assert list(ok) == ["onnxruntime"] and ok["onnxruntime"].backend == "onnxruntime" and "int8-dynamic" in skipped["openvino"]
    gpu = load_config(_config(tmp_path, tiny_dinov3_dir, backend="auto", name="g.toml"))
    import msgspec

    with pytest.raises(ConfigError, match="compile-engines"):
        auto_candidates(msgspec.structs.replace(gpu, target=msgspec.structs.replace(gpu.target, device="cuda")))


def test_cli_compile_target_flag(tmp_path, tiny_dinov3_dir, capsys):
    from streetcascade.cli import main
    from streetcascade.manifest import read_manifest

    cfg = _config(tmp_path, tiny_dinov3_dir, backend="onnxruntime")
    assert main(["compile", "--config", str(cfg), "--target", "openvino", "-q"]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.name == "cpu-x86_64-openvino" and read_manifest(out).target.backend == "openvino"
    assert main(["info", "--engines", str(out)]) == 0
    assert "stage1.classifier.fp32.xml + stage1.classifier.fp32.bin" in capsys.readouterr().out


def test_openvino_engine_set_runs_without_heavy_packages(ov_engine_dir):
    """The online side with an OpenVINO engine set: no torch, transformers, onnx or NNCF."""
    from support import REPO, SAMPLES, run_python

    block = "import sys\nfor name in ('torch', 'transformers', 'onnx', 'onnxscript', 'safetensors', 'nncf'):\n    sys.modules[name] = None\n"
    code = block + f"""
sys.path.insert(0, {str(REPO / 'tests')!r})
from streetcascade.runtime import load_engine_set, decode_image
with load_engine_set({str(ov_engine_dir)!r}) as es:
    d = es.cascade.classify(decode_image(open({str(SAMPLES / 'street-barrier.jpg')!r}, 'rb').read()))
    print(round(d.probability, 6), d.stage)
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    p, stage = r.stdout.split()
    assert 0.0 <= float(p) <= 1.0 and stage == "stage1"
