"""The HTTP edge under hostile input (miner/edge.py, wire.py, images.py): every class of attack
found against `streetcascade serve` is refused with a 4xx or closed within its time limit,
memory stays bounded, nothing logs a traceback, and valid signed requests keep being served.

Attackers connect from 127.0.0.2 (Linux routes all of 127/8 to loopback), the validator from
127.0.0.1, so the per-IP cap separates them as it would on the internet.
"""

from __future__ import annotations

import base64
import io
import logging
import resource
import socket
import threading
import time

import httpx
import pytest
from streetcascade.miner.config import EdgeConfig, LimitsConfig, PolicyConfig
from streetcascade.miner.edge import connection_cap, raise_open_files_limit
from streetcascade.miner.lograte import RateLimitedLog
from streetcascade.miner.wire import decode_body, parse_headers
from streetcascade.errors import BadInput

from bench.dendrite_client import build_request, raw_request, signed_headers, synapse_body

ATTACKER = "127.0.0.2"
FAST = EdgeConfig(idle_timeout_s=0.5, head_timeout_s=0.5, body_timeout_s=0.5, max_connections_per_ip=8)


def connect(port: int, source: str = ATTACKER) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5.0)
    s.connect(("127.0.0.1", port))
    return s


def read_until_closed(s: socket.socket, limit_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (or `limit_s` passes)."""
    s.settimeout(limit_s)
    out = b""
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < limit_s:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    except (ConnectionResetError, BrokenPipeError):
        return out
    except socket.timeout:
        pass
    raise AssertionError(f"connection still open after {limit_s} s; got {out[:200]!r}")


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:100]
    return int(reply.split(b" ", 2)[1])


def valid_request(keys, port: int, image_b64: str) -> float:
    """One signed validator request over a fresh connection from 127.0.0.1; returns its wall time."""
    t0 = time.perf_counter()
    with httpx.Client(timeout=10) as client:
        h = signed_headers(keys["validator"], keys["miner"].ss58_address)
        resp = client.post(f"http://127.0.0.1:{port}/ImageSynapse", content=synapse_body(image_b64, "ImageSynapse", 12.0, {}, {}), headers=h)
    assert resp.status_code == 200, resp.text
    return time.perf_counter() - t0


def metric(srv, name: str) -> str:
    return httpx.get(f"http://127.0.0.1:{srv.ops_port}/metrics").text


@pytest.fixture
def edge_server(server_factory):
    return server_factory(edge=FAST, policy=PolicyConfig(rate_per_s=1e6, rate_burst=10**6))


def test_idle_connection_closed_from_accept(edge_server, keys, image_b64):
    s = connect(edge_server.ports[0])
    t0 = time.monotonic()
    assert read_until_closed(s) == b""  # nothing owed: closed silently
    assert 0.4 < time.monotonic() - t0 < 3.0
    assert 'reason="idle_timeout"' in metric(edge_server, "edge_closed")
    valid_request(keys, edge_server.ports[0], image_b64)


def test_slow_head_gets_408(edge_server, keys, image_b64):
    s = connect(edge_server.ports[0])
    s.sendall(b"POST /ImageSynapse HTTP/1.1\r\nhost: x\r\n")  # ... and never the rest
    reply = read_until_closed(s)
    assert status_of(reply) == 408
    valid_request(keys, edge_server.ports[0], image_b64)


def test_body_shorter_than_content_length_is_closed(edge_server, keys, image_b64):
    """A validator-signed head whose body never completes: closed after body_timeout_s; the app
    sees a disconnect, and nothing waits forever."""
    raw = build_request(keys["validator"], keys["miner"].ss58_address, image_b64)
    s = connect(edge_server.ports[0], source="127.0.0.1")
    s.sendall(raw[:-100])  # Content-Length promises 100 more bytes
    reply = read_until_closed(s)
    assert reply == b"" or status_of(reply) == 408
    text = metric(edge_server, "")
    assert 'reason="body_timeout"' in text
    assert edge_server.state.in_flight == 0
    valid_request(keys, edge_server.ports[0], image_b64)


def test_huge_head_refused_and_memory_bounded(server_factory, keys, image_b64):
    """Before: a few connections sending tens of MB of one header line grew the process by
    hundreds of MB. Now each is cut at max_head_bytes (+ one socket read)."""
    srv = server_factory(edge=EdgeConfig(max_connections_per_ip=64), policy=PolicyConfig(rate_per_s=1e6, rate_burst=10**6))
    port = srv.ports[0]

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def attack(results: list):
        s = connect(port)
        sent = 0
        try:
            s.sendall(b"POST /ImageSynapse HTTP/1.1\r\nx-junk: ")
            chunk = b"a" * (1 << 20)
            while sent < (32 << 20):
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        try:
            results.append(read_until_closed(s, 10.0))
        except OSError:
            results.append(b"")

    before = rss_mb()
    results: list[bytes] = []
    threads = [threading.Thread(target=attack, args=(results,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    grown = rss_mb() - before
    # 8 connections x 32 MB offered; each held at most 16 KiB + one read.
    assert grown < 64, f"process grew by {grown:.0f} MB"
    assert len(results) == 8
    assert all(r == b"" or status_of(r) == 431 for r in results)
    assert 'reason="head_too_large"' in metric(srv, "")
    valid_request(keys, port, image_b64)


def test_per_ip_cap_keeps_validators_served(edge_server, keys, image_b64):
    port = edge_server.ports[0]
    held = [connect(port) for _ in range(FAST.max_connections_per_ip)]
    extra = connect(port)
    assert read_until_closed(extra, 2.0) == b""  # closed at accept
    assert 'reason="per_ip_cap"' in metric(edge_server, "")
    for _ in range(3):  # another IP is unaffected while the attacker holds its cap
        valid_request(keys, port, image_b64)
    for s in held:
        s.close()


def test_total_cap_evicts_idle_then_refuses_then_recovers(server_factory, keys, image_b64):
    edge = EdgeConfig(idle_timeout_s=30.0, head_timeout_s=0.5, max_connections=6, max_connections_per_ip=100)
    srv = server_factory(edge=edge)
    port = srv.ports[0]
    idle = [connect(port) for _ in range(6)]
    time.sleep(0.1)
    # Full of idle holders: a validator's new connection closes the longest-idle one instead.
    valid_request(keys, port, image_b64)
    assert 'reason="evicted_idle"' in metric(srv, "")
    assert read_until_closed(idle[0], 2.0) == b""
    for s in idle[1:]:
        s.close()
    time.sleep(0.1)
    # Full of requests in progress (slow heads): nothing to evict, so a new one is refused ...
    slow = [connect(port) for _ in range(6)]
    for s in slow:
        s.sendall(b"POST /ImageSynapse HTTP/1.1\r\n")
    time.sleep(0.1)
    assert read_until_closed(connect(port, source="127.0.0.3"), 2.0) == b""
    assert 'reason="connection_cap"' in metric(srv, "")
    # ... until their head timer frees them.
    for s in slow:
        assert status_of(read_until_closed(s)) == 408
    valid_request(keys, port, image_b64)


def test_answer_before_body_closes_connection(edge_server, keys, image_b64):
    """A stranger's 401 (or a 413 from Content-Length) is sent and the connection closed, so
    the rest of a large body is never read."""
    port = edge_server.ports[0]
    h = signed_headers(keys["stranger"], keys["miner"].ss58_address)
    head = raw_request("/ImageSynapse", h, b"x" * (3 << 20))[: -(3 << 20)]
    s = connect(port)
    s.sendall(head + b"x" * 1000)
    reply = read_until_closed(s)
    assert status_of(reply) == 403
    valid_request(keys, port, image_b64)


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (head + Content-Length body) from a keep-alive socket, leaving the socket open."""
    s.settimeout(10.0)  # a guard against a hang, not a measured time
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a full response head: {data[:200]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = s.recv(65536)
        assert chunk, "connection closed inside a response body"
        body += chunk
    return int(lines[0].split(" ", 2)[1]), headers, body


def test_answer_before_body_says_connection_close(server, keys, image_b64):
    """Every answer given before its request's body has arrived closes the connection, so it
    must say `Connection: close` (RFC 9112 section 9.6). Before, these answers read as keep-alive
    and the server closed anyway: a client that sent its next request on that connection (as
    httpx in test_rejections_each_status_and_keeps_serving did on a loaded box, and as any
    HTTP/1.1 client may) lost it to "server disconnected" or a reset. Here the body is held back
    until the answer is in, which makes the early answer certain instead of a race."""
    port = server.ports[0]
    miner = keys["miner"].ss58_address
    body = synapse_body(image_b64, "ImageSynapse", 12.0, {}, {})
    bad_signature = {**signed_headers(keys["validator"], miner), "bt_header_dendrite_signature": "0x" + "00" * 64}
    no_nonce = signed_headers(keys["validator"], miner)
    del no_nonce["bt_header_dendrite_nonce"]
    cases = [
        ("stranger", "/ImageSynapse", signed_headers(keys["stranger"], miner), len(body), 403),
        ("bad signature", "/ImageSynapse", bad_signature, len(body), 401),
        ("missing nonce", "/ImageSynapse", no_nonce, len(body), 400),
        ("unknown route", "/TextSynapse", signed_headers(keys["validator"], miner, name="TextSynapse"), len(body), 404),
        ("body over the limit", "/ImageSynapse", signed_headers(keys["validator"], miner), 20 << 20, 413),
    ]
    for name, path, h, length, status in cases:
        head = raw_request(path, h, b"")
        head = head.replace(b"content-length: 0\r\n", f"content-length: {length}\r\n".encode())
        s = connect(port, source="127.0.0.1")
        s.sendall(head)
        got, headers, _ = read_response(s)
        assert got == status, name
        assert headers.get("connection") == "close", (name, headers)
        try:  # the body the client had in hand; the server is closing and reads none of it
            s.sendall(body)
        except OSError:
            pass
        assert read_until_closed(s) == b"", name
        s.close()
    assert server.state.in_flight == 0
    valid_request(keys, port, image_b64)


def test_rejection_after_the_whole_request_keeps_the_connection(server, keys, image_b64):
    """Rejections of a request that arrived whole (the usual case: a validator's ~60 KB sent at
    once) keep the connection: the next request on it is served."""
    port = server.ports[0]
    miner = keys["miner"].ss58_address
    body = synapse_body(image_b64, "ImageSynapse", 12.0, {}, {})
    s = connect(port, source="127.0.0.1")
    for who, status in [("stranger", 403), ("validator", 200), ("stranger", 403), ("validator", 200)]:
        s.sendall(raw_request("/ImageSynapse", signed_headers(keys[who], miner), body))
        got, headers, _ = read_response(s)
        assert got == status, who
        assert headers.get("connection") != "close", (who, headers)
    # Pipelined (HTTP/1.1 allows it): the next request's head is already half in when the answer
    # to the first is sent. That answer said keep-alive, so the connection must stay for the rest.
    first = raw_request("/ImageSynapse", signed_headers(keys["stranger"], miner), body)
    second = raw_request("/ImageSynapse", signed_headers(keys["validator"], miner), body)
    s.sendall(first + second[:100])
    got, headers, _ = read_response(s)
    assert got == 403 and headers.get("connection") != "close", headers
    s.sendall(second[100:])
    assert read_response(s)[0] == 200
    s.close()


def test_upgrade_and_garbage_refused_without_logs(edge_server, keys, image_b64, caplog):
    port = edge_server.ports[0]
    caplog.set_level(logging.INFO)
    for _ in range(20):
        s = connect(port)
        s.sendall(b"GET /ImageSynapse HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        assert status_of(read_until_closed(s)) == 400
        s = connect(port)
        s.sendall(b"\x16\x03\x01\x02\x00garbage that is no HTTP\r\n\r\n")
        assert status_of(read_until_closed(s)) == 400
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]
    assert len([r for r in caplog.records if r.levelno >= logging.INFO]) <= 2  # rate-limited
    valid_request(keys, port, image_b64)


@pytest.mark.parametrize(
    "header,value",
    [
        ("timeout", "1e308"),
        ("timeout", "1e999"),
        ("timeout", "-1e308"),
        ("timeout", "nan"),
        ("bt_header_dendrite_nonce", "-" + "9" * 200),
        ("bt_header_dendrite_nonce", "9" * 60),
        ("bt_header_dendrite_nonce", "1e30"),
        ("bt_header_dendrite_nonce", "-1"),
        ("bt_header_dendrite_nonce", "1_000"),
        ("bt_header_dendrite_version", "9" * 4000),
        ("content-length", "9" * 30),
    ],
)
def test_overflowing_numeric_headers_are_4xx_without_traceback(server, keys, image_b64, header, value, caplog):
    caplog.set_level(logging.DEBUG)
    # Anyone can claim a registered validator's (public) hotkey: that passes the blacklist and
    # reaches the verifier, which does its nonce/timeout arithmetic before checking the signature.
    h = signed_headers(keys["validator"], keys["miner"].ss58_address, signer=keys["stranger"])
    h[header] = value
    h["connection"] = "close"
    body = synapse_body(image_b64, "ImageSynapse", 12.0, {}, {})
    s = connect(server.ports[0])
    raw = raw_request("/ImageSynapse", h, body)
    if header == "content-length":  # replace the real one
        raw = raw.replace(f"content-length: {len(body)}\r\n".encode(), b"")
    s.sendall(raw)
    status = status_of(read_until_closed(s))
    assert 400 <= status < 500
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    valid_request(keys, server.ports[0], image_b64)


def test_parse_headers_bounds_numbers():
    base = [(b"bt_header_dendrite_hotkey", b"5F"), (b"bt_header_dendrite_uuid", b"u"), (b"bt_header_dendrite_nonce", b"12")]
    assert parse_headers(base).dendrite_nonce == 12
    h = parse_headers(base + [(b"timeout", b"1e308")])
    assert h.timeout_s == 86400.0
    with pytest.raises(BadInput, match="nonce"):
        parse_headers(base[:2] + [(b"bt_header_dendrite_nonce", str(2**63).encode())])
    with pytest.raises(BadInput, match="version"):
        parse_headers(base + [(b"bt_header_dendrite_version", b"-3")])


def test_deeply_nested_json_is_400(server, keys):
    deep = b'{"image":"aGk=","dendrite":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(BadInput, match="nested too deeply"):
        decode_body(deep)
    h = signed_headers(keys["validator"], keys["miner"].ss58_address)
    resp = httpx.post(f"http://127.0.0.1:{server.ports[0]}/ImageSynapse", content=deep, headers=h, timeout=10)
    assert resp.status_code == 400 and "nested" in resp.json()["message"]


def eps_bytes() -> bytes:
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"


def tiff_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(buf, "TIFF")
    return buf.getvalue()


@pytest.mark.parametrize("name,data,match", [("eps", eps_bytes(), "accepted format"), ("tiff", tiff_bytes(), "accepted format")])
def test_only_validator_formats_are_opened(server, keys, name, data, match, monkeypatch):
    from PIL import EpsImagePlugin

    def never(*a, **k):  # pragma: no cover - the point is that this is never reached
        raise AssertionError("the EPS plugin was consulted")

    monkeypatch.setattr(EpsImagePlugin, "_accept", never, raising=False)
    h = signed_headers(keys["validator"], keys["miner"].ss58_address)
    body = synapse_body(base64.b64encode(data).decode(), "ImageSynapse", 12.0, {}, {})
    resp = httpx.post(f"http://127.0.0.1:{server.ports[0]}/ImageSynapse", content=body, headers=h, timeout=10)
    assert resp.status_code == 400 and match in resp.json()["message"], resp.text


def test_image_formats_config_refuses_eps():
    with pytest.raises(ValueError, match="EPS"):
        LimitsConfig(image_formats=("JPEG", "EPS"))


def test_raise_open_files_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowered = min(soft, 512)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        new_soft, new_hard = raise_open_files_limit(4096)
        assert new_hard == hard
        assert new_soft == (4096 if hard == resource.RLIM_INFINITY else min(4096, hard))
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == new_soft
        assert raise_open_files_limit(0) == (new_soft, hard)  # 0 leaves it alone
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert connection_cap(EdgeConfig(), 1024) == 1024 - 256
    assert connection_cap(EdgeConfig(max_connections=10), 1024) == 10


def test_rate_limited_log_counts_repeats(caplog):
    clock = [0.0]
    rlog = RateLimitedLog(logging.getLogger("t"), interval_s=60, clock=lambda: clock[0])
    caplog.set_level(logging.WARNING)
    assert rlog.warning("k", "bad thing %d", 1)
    for i in range(50):
        assert not rlog.warning("k", "bad thing %d", i)
    assert rlog.warning("other", "another kind")
    clock[0] = 61.0
    assert rlog.warning("k", "bad thing %d", 99)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["bad thing 1", "another kind", "bad thing 99 (and 50 more like it in the last 61 s)"]


def test_mixed_attack_valid_requests_still_served(server_factory, keys, image_b64):
    """Idle holders, slow heads, huge heads and short bodies at once from one IP, while a
    validator keeps sending: every valid request is answered (the bench measures how fast)."""
    srv = server_factory(edge=FAST, policy=PolicyConfig(rate_per_s=1e6, rate_burst=10**6))
    port = srv.ports[0]
    stop = threading.Event()

    def attacker(kind: str):
        while not stop.is_set():
            try:
                s = connect(port)
                if kind == "slow":
                    s.sendall(b"POST /ImageSynapse HTTP/1.1\r\n")
                elif kind == "huge":
                    s.sendall(b"POST /x HTTP/1.1\r\nx: " + b"a" * (1 << 20))
                elif kind == "short":
                    s.sendall(b"POST /ImageSynapse HTTP/1.1\r\ncontent-length: 999999\r\n\r\nabc")
                s.settimeout(2.0)
                s.recv(100)
            except OSError:
                pass
            finally:
                s.close()

    threads = [threading.Thread(target=attacker, args=(k,), daemon=True) for k in ("idle", "slow", "huge", "short") * 3]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        times = [valid_request(keys, port, image_b64) for _ in range(10)]
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert len(times) == 10
