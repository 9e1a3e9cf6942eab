"""The miner serving a real compiled engine set (ONNX Runtime), not the fake: the answer for
a sample photo equals what the runtime gives for the same decoded image."""

import base64

import httpx
import pytest

from streetcascade.miner.client import signed_headers, synapse_body
from streetcascade.runtime import decode_image, load_engine_set


def test_serves_compiled_engine_set(tiny_engine_dir, keys, server_factory, sample_bytes):
    data = sample_bytes["street-barrier.jpg"]
    with load_engine_set(tiny_engine_dir) as es:
        want = es.cascade.classify(decode_image(data)).probability
        port = server_factory(stages=es.cascade.stages).ports[0]
        body = synapse_body(base64.b64encode(data).decode(), "ImageSynapse", 12.0, {}, {})
        with httpx.Client() as client:
            resp = client.post(f"http://127.0.0.1:{port}/ImageSynapse", content=body,
                               headers=signed_headers(keys["validator"], keys["miner"].ss58_address))
        assert resp.status_code == 200, resp.text
        assert resp.json()["prediction"] == pytest.approx(want, abs=1e-6)
