"""Scale-out on Ray Serve, on a local Ray cluster started in this process (2 CPUs, a small object
store, no dashboard, no HTTP proxy), with the stage 1 + OCR engine set the OCR tests build (a
tiny random DINOv3, then PP-OCR on real weights): the application decides the sample photos
exactly as the local runtime does (same probability within float tolerance, same deciding stage,
same text), alone and under concurrent calls that stage 1 batches; a deadline too short for the
remote OCR stage, or a call to it that times out, is a counted fallback as locally; Ray down, a
missing application, a bad address and a replica that cannot load are errors of our tree."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from support import REPO, SAMPLES, run_python

from bench.miner_server import free_port

pytest.importorskip("ray", exc_type=ImportError)
pytest.importorskip("cv2", exc_type=ImportError)
pytest.importorskip("rapidfuzz", exc_type=ImportError)

from streetcascade.errors import BackendUnavailable, BadInput, DeadlineExceeded, EngineMismatch, InferenceError  # noqa: E402
from streetcascade.runtime import Cascade, decode_image, load_engine_set  # noqa: E402
from streetcascade.runtime.ray_app import deploy  # noqa: E402
from streetcascade.runtime.ray_plan import RayConfig, RayStageConfig  # noqa: E402
from streetcascade.runtime.ray_stage import connect_cascade, error_from_replica  # noqa: E402
from streetcascade.settings import RuntimeConfig, StageThresholds  # noqa: E402

pytestmark = pytest.mark.slow

RAY = RayConfig(app_name="sc-test", connect_timeout_s=30.0, stages={
    "stage1": RayStageConfig(num_cpus=0.5, max_batch_size=4, max_ongoing_requests=8, batch_wait_timeout_s=0.05),
    "ocr": RayStageConfig(num_cpus=0.5),
})
RUNTIME = RuntimeConfig(intra_op_threads=1, spin_wait=False)  # a shared 2-core machine


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray import serve

    if ray.is_initialized():  # pragma: no cover - another module left one running
        pytest.skip("a Ray connection is already open in this process")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, logging_level=logging.WARNING,
             log_to_driver=False, configure_logging=False)
    serve.start(proxy_location="Disabled")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()  # stops every process this cluster started (Serve's own shutdown waits on each replica)


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    return {p.name: decode_image(p.read_bytes()) for p in sorted(SAMPLES.glob("*.jpg"))}


@pytest.fixture(scope="module")
def thresholds(tiny_ocr_engine_dir, images):
    """Stage 1's exit band cut at the widest gap of its probabilities on the samples, so that some
    samples exit at stage 1 and the others go on to OCR (the tiny random model is never sure)."""
    with load_engine_set(tiny_ocr_engine_dir, RUNTIME, only_stages=["stage1"]) as es:
        p = np.sort(es.cascade.stages[0].score(list(images.values())))
    gap = int(np.argmax(np.diff(p[1:-1]))) + 1  # not at the ends: both stages must decide some
    return {"stage1": StageThresholds(exit_low=0.0, exit_high=float(p[gap] + p[gap + 1]) / 2)}


@pytest.fixture(scope="module")
def local(tiny_ocr_engine_dir, thresholds):
    with load_engine_set(tiny_ocr_engine_dir, RUNTIME, thresholds) as es:
        yield es.cascade


@pytest.fixture(scope="module")
def app(cluster, tiny_ocr_engine_dir, thresholds):
    return deploy(tiny_ocr_engine_dir, RAY, RUNTIME, "auto", thresholds)


@pytest.fixture()
def remote(app):
    with connect_cascade("auto", RAY, RUNTIME) as rc:
        yield rc.cascade


def same(a, b, tol=1e-6):
    assert (a.stage, a.text, a.fallback) == (b.stage, b.text, b.fallback)
    assert a.probability == pytest.approx(b.probability, abs=tol)


def test_the_app_describes_its_stages(app, thresholds):
    assert [s["name"] for s in app["stages"]] == ["stage1", "ocr"]
    s1, ocr = app["stages"]
    assert s1["batched"] and s1["max_batch_size"] == 4 and not ocr["batched"] and ocr["evidence"]
    assert s1["thresholds"]["exit_high"] == pytest.approx(thresholds["stage1"].exit_high)  # the override reached the replica
    assert 0 < s1["replica_memory_bytes"] <= s1["replica_budget_bytes"]


def test_same_decisions_as_the_local_runtime(local, remote, images):
    decided_by = set()
    for name, rgb in images.items():
        want, got = local.classify(rgb), remote.classify(rgb)
        same(got, want)
        decided_by.add(want.stage)
    assert decided_by == {"stage1", "ocr"}, "the samples must exercise both stages"
    # All at once: stage 1 gets 8 images, more than its batch of 4 (runs unbatched), OCR the rest.
    for got, want in zip(remote.classify_batch(list(images.values())), local.classify_batch(list(images.values()))):
        same(got, want, tol=1e-5)


def test_concurrent_calls_are_batched_and_decide_the_same(local, remote, images, app):
    import ray
    from ray import serve

    want = {name: local.classify(rgb) for name, rgb in images.items()}
    names = list(images) * 3
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda n: remote.classify(images[n]), names))
    for name, d in zip(names, got):
        same(d, want[name], tol=1e-5)  # a batch of several images may round differently from batch 1
    stats = serve.get_deployment_handle("stage-stage1", RAY.app_name).stats.remote().result(timeout_s=10)
    assert stats["largest_batch"] >= 2, stats
    assert ray.is_initialized()


def test_a_deadline_too_short_for_the_remote_ocr_stage_is_a_counted_fallback(local, remote, images, caplog):
    ocr_bound = [name for name, rgb in images.items() if local.classify(rgb).stage == "ocr"][0]
    margin = 5000.0  # stage 1 has 5 s; OCR would have to fit in 1 ms
    local_short = Cascade(local.stages, safety_margin_ms=margin)
    remote_short = Cascade(remote.stages, safety_margin_ms=margin)
    calls_before = remote.stages[1].latency.mean_ms
    want = local_short.classify(images[ocr_bound], deadline_ms=margin + 1.0)
    with caplog.at_level(logging.INFO, logger="streetcascade.runtime.cascade"):
        got = remote_short.classify(images[ocr_bound], deadline_ms=margin + 1.0)
    same(got, want)
    assert got.stage == "stage1" and got.fallback and remote_short.counters["fallbacks"] == 1
    assert remote.stages[1].latency.mean_ms == calls_before  # OCR was never called
    assert "deadline: skipping stage ocr" in caplog.text


def test_a_remote_call_that_times_out_is_a_counted_fallback_without_traceback(remote, local, images, caplog):
    ocr_bound = [name for name, rgb in images.items() if local.classify(rgb).stage == "ocr"][0]
    cascade = Cascade(remote.stages)
    remote.stages[1].call_timeout_s = 0.001  # less than any Ray round trip, let alone PP-OCR
    with caplog.at_level(logging.WARNING, logger="streetcascade.runtime.cascade"):
        d = cascade.classify(images[ocr_bound], deadline_ms=60_000.0)
    assert d.stage == "stage1" and d.fallback
    assert cascade.counters["stage_errors"] == 1 and cascade.counters["fallbacks"] == 1
    (record,) = [r for r in caplog.records if "stage ocr failed" in r.getMessage()]
    assert "Ray Serve" in record.getMessage() and record.exc_info is None
    # Stage 1 itself out of time: an error of our tree (the miner answers 503), no answer made up.
    with pytest.raises(DeadlineExceeded, match="stage stage1"):
        cascade.classify(images[ocr_bound], deadline_ms=0.001)
    assert cascade.counters["stage_errors"] == 2


def test_replica_errors_are_errors_of_our_tree(remote, images):
    rgb = next(iter(images.values()))
    with pytest.raises(BadInput, match=r"stage ocr \(on Ray Serve\): stage ocr: 2 priors for 1 images"):
        remote.stages[1].score_given([rgb], [0.5, 0.5])
    with pytest.raises(BadInput, match=r"stage stage1 \(on Ray Serve\): expected an HxWx3 uint8 RGB array"):
        remote.classify(np.zeros((4, 4, 3, 2), dtype=np.uint8))  # the cascade lets BadInput through: the miner answers 400
    # Anything else a replica raises (here Python's TypeError for a wrong call) is an InferenceError.
    with pytest.raises(Exception) as raised:
        remote.stages[0].handle.stats.remote("unexpected").result(timeout_s=30)
    err = error_from_replica(raised.value, "stage stage1")
    assert isinstance(err, InferenceError) and "stage stage1 failed on Ray Serve: TypeError" in str(err)


def test_ray_down_missing_app_and_bad_address_are_clear_errors(cluster):
    t0 = time.perf_counter()
    with pytest.raises(BackendUnavailable, match=r"Ray cluster at 127\.0\.0\.1:\d+ is not reachable"):
        connect_cascade(f"127.0.0.1:{free_port()}", RayConfig(connect_timeout_s=2.0))
    assert time.perf_counter() - t0 < 10  # ray.init alone would retry a dead address for minutes
    with pytest.raises(BackendUnavailable, match=r"expected \"auto\", \"HOST:PORT\""):
        connect_cascade("head-node", RayConfig())
    with pytest.raises(BackendUnavailable, match=r"no Ray Serve application 'nope' on the cluster.*streetcascade ray-deploy"):
        connect_cascade("auto", RayConfig(app_name="nope"))


def test_the_miner_reaches_the_app_from_miner_toml(cluster, app, local, images, tmp_path):
    """The miner's own path, in a fresh process: miner.toml with [engine] ray_address = the head's
    GCS address -> build_cascade joins the cluster (ray.init) -> the same decisions."""
    toml = tmp_path / "miner.toml"
    toml.write_text(f"""
[[hotkeys]]
port = 8091
hotkey_file = "hk.json"
[engine]
engine = "fake"
ray_address = "{cluster}"
[runtime]
intra_op_threads = 1
[ray]
app_name = "{RAY.app_name}"
""")
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO / 'tests')!r})
from support import SAMPLES
from streetcascade.miner.cli import build_cascade
from streetcascade.miner.config import load_miner_config
from streetcascade.runtime import decode_image
cascade, close = build_cascade(load_miner_config({str(toml)!r}))
try:
    out = {{p.name: cascade.classify(decode_image(p.read_bytes()), deadline_ms=60000) for p in sorted(SAMPLES.glob('*.jpg'))}}
    print(json.dumps({{k: [d.probability, d.stage, d.text, d.fallback] for k, d in out.items()}}))
finally:
    close()
"""
    r = run_python(code, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(got) == sorted(images)
    for name, rgb in images.items():
        want = local.classify(rgb)
        p, stage, text, fallback = got[name]
        assert (stage, text, fallback) == (want.stage, want.text, want.fallback) and p == pytest.approx(want.probability, abs=1e-6)


def test_a_replica_that_cannot_load_fails_the_deploy_with_its_error(cluster, tiny_ocr_engine_dir, tmp_path):
    import shutil

    from ray import serve

    broken = tmp_path / "engines"
    shutil.copytree(tiny_ocr_engine_dir, broken)
    graph = next(p for p in broken.iterdir() if p.name.startswith("stage1") and p.suffix in (".onnx", ".xml"))
    graph.write_bytes(graph.read_bytes() + b" ")
    cfg = RayConfig(app_name="sc-broken", stages={"stage1": RayStageConfig(num_cpus=0.25), "ocr": RayStageConfig(num_cpus=0.25)})
    with pytest.raises(EngineMismatch, match=r"deployment stage-stage1 of application 'sc-broken'.*sha256 .* differs from the manifest"):
        deploy(broken, cfg, RUNTIME, "auto")
    assert "sc-broken" not in serve.status().applications  # the half-made application was removed


def test_doctor_checks_the_ray_application(app, tmp_path):
    from streetcascade.miner.config import load_miner_config
    from streetcascade.miner.doctor import FAIL, OK, _check_engine

    toml = tmp_path / "miner.toml"
    base = '[[hotkeys]]\nport = 8091\nhotkey_file = "hk.json"\n[engine]\nray_address = "auto"\n'
    toml.write_text(base + f'[ray]\napp_name = "{RAY.app_name}"\n')
    engine, weights = _check_engine(load_miner_config(toml))
    assert engine.status == OK and "stages ['stage1', 'ocr']" in engine.detail
    assert weights.status == FAIL and "placeholder" in weights.detail  # the tiny stage 1 is random
    toml.write_text(base + '[ray]\napp_name = "nope"\n')
    (missing,) = _check_engine(load_miner_config(toml))
    assert missing.status == FAIL and "no Ray Serve application 'nope'" in missing.detail and "ray-deploy" in missing.fix
