"""The axon over real HTTP: every rejection gets its documented status, and the server keeps
answering valid requests in between."""

import base64
import io
import sys
import time

import httpx
import pytest
from PIL import Image
from streetcascade.miner.config import LimitsConfig, PolicyConfig
from streetcascade.runtime import ClassifierStage
from streetcascade.runtime.backends.fake import FakeEngine

from bench.dendrite_client import signed_headers, synapse_body
from streetcascade.settings import StageThresholds


def post(client, port, keys, image_b64, *, who="validator", to="miner", route="ImageSynapse", body=None, headers=None, **kw):
    h = signed_headers(keys[who], keys[to].ss58_address, name=route, **kw)
    if headers is not None:
        h = headers(h)
    if body is None:
        body = synapse_body(image_b64, route, 12.0, {"hotkey": keys[who].ss58_address}, {"hotkey": keys[to].ss58_address})
    return client.post(f"http://127.0.0.1:{port}/{route}", content=body, headers=h)


def assert_ok(resp, lo=0.0, hi=1.0):
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["bt_header_axon_status_code"] == "200"
    assert resp.headers["bt_header_axon_status_message"] == "Success"
    assert float(resp.headers["bt_header_axon_process_time"]) >= 0
    p = resp.json()["prediction"]
    assert isinstance(p, float) and lo <= p <= hi
    return p


def assert_status(resp, status, match=""):
    assert resp.status_code == status, resp.text
    assert resp.headers["bt_header_axon_status_code"] == str(status)
    msg = resp.json()["message"]
    assert match.lower() in msg.lower(), msg
    assert resp.headers["bt_header_axon_status_message"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decompression_bomb() -> bytes:
    # 20000 x 20000 PNG of one color: ~1 MB compressed? no: a few hundred KB; far over max_pixels
    img = Image.new("L", (20000, 20000), 0)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False, compress_level=9)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb():
    return decompression_bomb()


def test_rejections_each_status_and_keeps_serving(server_factory, keys, image_b64, jpeg, bomb):
    srv = server_factory(policy=PolicyConfig(rate_per_s=1e6, rate_burst=10**6), limits=LimitsConfig(max_body_bytes=4 << 20, max_pixels=4096 * 4096))
    port = srv.ports[0]
    now = time.time_ns()
    replay_headers = signed_headers(keys["validator"], keys["miner"].ss58_address, nonce=now, uuid="replay")
    body_ok = synapse_body(image_b64, "ImageSynapse", 12.0, {}, {})
    truncated = jpeg(123)[: len(jpeg(123)) // 2]

    def drop(name):
        def f(h):
            del h[name]
            return h
        return f

    cases = [
        ("bad signature", dict(headers=lambda h: {**h, "bt_header_dendrite_signature": "0x" + "00" * 64}), 401, "signature"),
        ("signed by another key", dict(signer=keys["stranger"]), 401, "signature"),
        ("signed for another axon", dict(sign_for=keys["miner2"].ss58_address), 401, "signature"),
        ("stale nonce", dict(nonce=now - int(60e9)), 401, "too old"),
        ("missing signature", dict(headers=drop("bt_header_dendrite_signature")), 401, "missing"),
        ("missing hotkey header", dict(headers=drop("bt_header_dendrite_hotkey")), 400, "missing header"),
        ("missing nonce header", dict(headers=drop("bt_header_dendrite_nonce")), 400, "missing header"),
        ("unknown hotkey", dict(who="stranger"), 403, "not registered"),
        ("low stake", dict(who="poor"), 403, "below the minimum"),
        ("no validator permit", dict(who="nopermit"), 403, "permit"),
        ("wrong route", dict(route="TextSynapse"), 404, "not found"),
        ("invalid base64", dict(body=synapse_body("!!!not base64!!!", "ImageSynapse", 12.0, {}, {})), 400, "base64"),
        ("non-image bytes", dict(body=synapse_body(b64(b"hello, I am not an image" * 10), "ImageSynapse", 12.0, {}, {})), 400, "not an image"),
        ("truncated jpeg", dict(body=synapse_body(b64(truncated), "ImageSynapse", 12.0, {}, {})), 400, "truncated"),
        ("decompression bomb", dict(body=synapse_body(b64(bomb), "ImageSynapse", 12.0, {}, {})), 413, "pixels"),
        ("not json", dict(body=b"{not json"), 400, "not json"),
        ("wrong types", dict(body=b'{"image": 5}'), 422, "image"),
        ("no image", dict(body=b'{"prediction": -1.0}'), 422, "no image"),
        ("empty body", dict(body=b""), 400, "empty"),
    ]
    with httpx.Client(timeout=30) as client:
        for name, kw, status, match in cases:
            resp = post(client, port, keys, image_b64, **kw)
            assert resp.status_code == status, (name, resp.status_code, resp.text)
            assert_status(resp, status, match)
            # Still serving, on the same connection, or on a new one where the rejection came before
            # the body and said `Connection: close` (tests/miner/test_miner_edge.py checks it does).
            assert_ok(post(client, port, keys, image_b64))
        # replay: the same signed request twice
        first = client.post(f"http://127.0.0.1:{port}/ImageSynapse", content=body_ok, headers=replay_headers)
        assert_ok(first)
        again = client.post(f"http://127.0.0.1:{port}/ImageSynapse", content=body_ok, headers=replay_headers)
        assert_status(again, 401, "newer one")
        # 20 MB body: refused from Content-Length, before reading it
        big = synapse_body("A" * (20 << 20), "ImageSynapse", 12.0, {}, {})
        assert_status(post(client, port, keys, image_b64, body=big), 413, "over the limit")
        assert_ok(post(client, port, keys, image_b64))
        # GET on a synapse route
        assert client.get(f"http://127.0.0.1:{port}/ImageSynapse").status_code == 404
    with httpx.Client(timeout=30) as client:
        assert_ok(post(client, port, keys, image_b64))


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGBA"), ("WEBP", "RGB"), ("PNG", "L"), ("JPEG", "CMYK"), ("PNG", "P")])
def test_any_format_and_mode_is_answered(server, keys, jpeg, fmt, mode):
    with httpx.Client() as client:
        body = synapse_body(b64(jpeg(220, 300, fmt, mode)), "ImageSynapse", 12.0, {}, {})
        assert_ok(post(client, server.ports[0], keys, None, body=body))


def test_prediction_follows_the_model_and_extended_route(server, keys, jpeg):
    with httpx.Client() as client:
        bright = assert_ok(post(client, server.ports[0], keys, b64(jpeg(250))))
        dark = assert_ok(post(client, server.ports[0], keys, b64(jpeg(5))))
        assert bright > 0.9 and dark < 0.1  # FakeEngine: (mean - 127.5) / 32
        body = synapse_body(b64(jpeg(250)), "ExtendedImageSynapse", 12.0, {}, {}, extra={"model_url": "hf/x"})
        resp = post(client, server.ports[0], keys, None, route="ExtendedImageSynapse", body=body)
        assert_ok(resp)
        assert resp.json()["model_url"] == "hf/x" and resp.json()["name"] == "ExtendedImageSynapse"
        assert "image" not in resp.json()


def test_cache_answers_repeats_without_inference(server_factory, keys, jpeg):
    engine = FakeEngine()
    srv = server_factory(stages=[ClassifierStage("stage1", engine, 224)])
    with httpx.Client() as client:
        img = b64(jpeg(77))
        answers = {assert_ok(post(client, srv.ports[0], keys, img)) for _ in range(5)}
        assert len(answers) == 1 and engine.calls == 1
        metrics = client.get(f"http://127.0.0.1:{srv.ops_port}/metrics").text
        assert "streetcascade_cache_hits_total 4.0" in metrics


def test_rate_limit_per_validator(server_factory, keys, image_b64):
    srv = server_factory(policy=PolicyConfig(rate_per_s=0.001, rate_burst=3))
    with httpx.Client() as client:
        for _ in range(3):
            assert_ok(post(client, srv.ports[0], keys, image_b64))
        assert_status(post(client, srv.ports[0], keys, image_b64), 429, "rate limit")
        assert_ok(post(client, srv.ports[0], keys, image_b64, who="validator2"))  # others unaffected


def test_fallback_when_later_stage_cannot_finish(server_factory, keys, jpeg):
    stages = [
        ClassifierStage("stage1", FakeEngine(), 224, StageThresholds(exit_low=0.0, exit_high=1.0)),  # never exits
        ClassifierStage("slow", FakeEngine(latency_ms=3000), 224, prior_ms=3000),
    ]
    srv = server_factory(stages=stages)
    with httpx.Client(timeout=10) as client:
        t = time.perf_counter()
        resp = post(client, srv.ports[0], keys, b64(jpeg(200)), timeout=1.0)
        assert_ok(resp)
        assert time.perf_counter() - t < 1.0  # within the request's own timeout: the 3 s stage was skipped
        metrics = client.get(f"http://127.0.0.1:{srv.ops_port}/metrics").text
        assert "streetcascade_fallbacks_total 1.0" in metrics


def test_overload_refuses_low_stake_first(server_factory, keys, jpeg):
    """One slow thread, a queue of 1: a burst leaves the high-stake requests answered."""
    import concurrent.futures as cf

    stages = [ClassifierStage("stage1", FakeEngine(latency_ms=400), 224, prior_ms=400)]
    srv = server_factory(stages=stages, policy=PolicyConfig(max_queue=1, rate_per_s=1e6, rate_burst=10**6), limits=LimitsConfig(cache_entries=0))

    def one(who, value):
        with httpx.Client(timeout=10) as client:
            return who, post(client, srv.ports[0], keys, b64(jpeg(value)), who=who).status_code

    sched = srv.state.scheduler

    def wait_for(cond):
        t0 = time.time()
        while not cond():
            assert time.time() - t0 < 10, "server never reached the expected state"
            time.sleep(0.002)

    with cf.ThreadPoolExecutor(8) as pool:
        first = pool.submit(one, "validator", 1)
        wait_for(lambda: sched.busy == 1)  # occupies the one thread
        low = pool.submit(one, "validator2", 2)  # queued first (lower stake)
        wait_for(lambda: sched.waiting == 1)
        high = pool.submit(one, "validator", 3)  # arrives later, higher stake: low is refused
        results = [f.result() for f in (first, low, high)]
    assert results == [("validator", 200), ("validator2", 503), ("validator", 200)]


def test_several_hotkeys_one_runtime(server_factory, keys, image_b64):
    engine = FakeEngine()
    srv = server_factory(hotkeys=("miner", "miner2"), stages=[ClassifierStage("stage1", engine, 224)], limits=LimitsConfig(cache_entries=0))
    p1, p2 = srv.ports
    with httpx.Client() as client:
        r1 = post(client, p1, keys, image_b64, to="miner")
        r2 = post(client, p2, keys, image_b64, to="miner2")
        assert_ok(r1), assert_ok(r2)
        assert r1.headers["bt_header_axon_hotkey"] == keys["miner"].ss58_address
        assert r2.headers["bt_header_axon_hotkey"] == keys["miner2"].ss58_address
        # a request for miner2 sent to miner's port is refused
        assert_status(post(client, p1, keys, image_b64, to="miner2"), 401, "addressed")
    assert engine.calls == 2  # one engine, both hotkeys
    assert srv.state.cascade.counters["decisions"] == 2


def test_health_and_metrics(server, keys, image_b64):
    with httpx.Client() as client:
        assert_ok(post(client, server.ports[0], keys, image_b64))
        post(client, server.ports[0], keys, image_b64, who="stranger")
        health = client.get(f"http://127.0.0.1:{server.ops_port}/health")
        assert health.status_code == 200 and health.json()["metagraph_ready"] is True
        text = client.get(f"http://127.0.0.1:{server.ops_port}/metrics").text
    for needle in [
        'streetcascade_requests_total{hotkey="%s",route="ImageSynapse",status="200"}' % keys["miner"].ss58_address,
        'streetcascade_blacklisted_total{reason="unknown"} 1.0',
        'streetcascade_stage_seconds_count{stage="stage1"}',
        "streetcascade_in_flight 0.0",
        "streetcascade_request_seconds_bucket",
    ]:
        assert needle in text, needle


def test_miner_imports_without_heavy_packages():
    import subprocess

    code = (
        "import sys\n"
        "for m in ('torch', 'transformers', 'onnx', 'bittensor', 'fastapi', 'starlette'): sys.modules[m] = None\n"
        "import streetcascade.miner.server, streetcascade.miner.cli, streetcascade.miner.chain, streetcascade.miner.register\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_decode_overlaps_another_requests_inference(server_factory, keys, jpeg, monkeypatch):
    """Decoding runs on its own thread before the inference queue: while one request is being
    inferred, the next one is already decoded (bad images fail there, before the queue)."""
    import concurrent.futures as cf
    import threading

    from streetcascade.miner.state import MinerState

    events = []
    real_decode, real_job = MinerState.decode, MinerState.job

    def decode(self, data):
        events.append(("decode", threading.current_thread().name, time.perf_counter()))
        return real_decode(self, data)

    def job(self, image, deadline):
        start = time.perf_counter()
        out = real_job(self, image, deadline)
        events.append(("infer", start, time.perf_counter()))
        return out

    monkeypatch.setattr(MinerState, "decode", decode)
    monkeypatch.setattr(MinerState, "job", job)
    stages = [ClassifierStage("stage1", FakeEngine(latency_ms=300), 224, prior_ms=300)]
    srv = server_factory(stages=stages, policy=PolicyConfig(rate_per_s=1e6, rate_burst=10**6), limits=LimitsConfig(cache_entries=0))

    def one(value):
        with httpx.Client(timeout=10) as client:
            return post(client, srv.ports[0], keys, b64(jpeg(value))).status_code

    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(one, 10)
        time.sleep(0.1)  # the first is inferring now
        second = pool.submit(one, 20)
        assert first.result() == 200 and second.result() == 200
    decodes = [e for e in events if e[0] == "decode"]
    infers = [e for e in events if e[0] == "infer"]
    assert all(name.startswith("decode") for _, name, _ in decodes)
    assert decodes[1][2] < infers[0][2]  # the second image was decoded while the first was inferred
