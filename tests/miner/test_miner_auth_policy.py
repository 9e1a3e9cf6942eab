"""Units: header parsing, signature + nonce rules, blacklist, rate limit, scheduler, config."""

import asyncio
import time
from pathlib import Path

import pytest
from support import fixed_metagraph

from bench.dendrite_client import signed_headers
from streetcascade.errors import BadInput, ConfigError, Overloaded
from streetcascade.miner.auth import ALLOWED_DELTA_NS, NonceStore, Verifier
from streetcascade.miner.config import load_miner_config
from streetcascade.miner.errors import Blacklisted, NotVerified, RateLimited
from streetcascade.miner.metagraph import MetagraphView
from streetcascade.miner.policy import Blacklist, RateLimiter, Scheduler
from streetcascade.miner.wire import EMPTY_BODY_HASH, body_hash, parse_headers, parse_signature

REPO = Path(__file__).resolve().parents[2]


def raw(headers: dict) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def test_empty_body_hash_is_sha3_of_nothing():
    assert EMPTY_BODY_HASH == "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
    assert body_hash(()) == EMPTY_BODY_HASH
    assert body_hash(("a",), {"a": 1}) != EMPTY_BODY_HASH


def test_parse_headers_reads_the_dendrite_fields(keys):
    h = signed_headers(keys["validator"], keys["miner"].ss58_address, nonce=123, uuid="u-1", timeout=9.0)
    parsed = parse_headers(raw(h))
    assert parsed.dendrite_hotkey == keys["validator"].ss58_address
    assert parsed.dendrite_nonce == 123 and parsed.dendrite_uuid == "u-1"
    assert parsed.timeout_s == 9.0 and parsed.dendrite_version == 91202
    assert parsed.axon_hotkey == keys["miner"].ss58_address


@pytest.mark.parametrize("drop", ["bt_header_dendrite_hotkey", "bt_header_dendrite_nonce", "bt_header_dendrite_uuid"])
def test_parse_headers_missing_required(keys, drop):
    h = signed_headers(keys["validator"], keys["miner"].ss58_address)
    del h[drop]
    with pytest.raises(BadInput, match=drop):
        parse_headers(raw(h))


@pytest.mark.parametrize("field,value", [("bt_header_dendrite_nonce", "abc"), ("bt_header_dendrite_version", "x"), ("bt_header_dendrite_uuid", "u" * 300)])
def test_parse_headers_malformed(keys, field, value):
    h = signed_headers(keys["validator"], keys["miner"].ss58_address)
    h[field] = value
    with pytest.raises(BadInput):
        parse_headers(raw(h))


def test_unparsable_timeout_means_default(keys):
    h = signed_headers(keys["validator"], keys["miner"].ss58_address)
    for bad in ("None", "nan", "-3", "inf"):
        h["timeout"] = bad
        assert parse_headers(raw(h)).timeout_s is None


@pytest.mark.parametrize("sig", ["", "0x", "0x" + "zz" * 64, "0x" + "ab" * 10])
def test_parse_signature_rejects(sig):
    with pytest.raises(NotVerified):
        parse_signature(sig)


def make_verifier(keys, now_ns):
    return Verifier(keys["miner"].ss58_address, clock_ns=lambda: now_ns[0])


def headers(keys, **kw):
    who = kw.pop("who", "validator")
    return parse_headers(raw(signed_headers(keys[who], keys["miner"].ss58_address, **kw)))


def test_verifier_accepts_then_rejects_replay(keys):
    now = [time.time_ns()]
    v = make_verifier(keys, now)
    h = headers(keys, nonce=now[0], uuid="a")
    v.verify(h, EMPTY_BODY_HASH)
    with pytest.raises(NotVerified, match="newer one"):
        v.verify(h, EMPTY_BODY_HASH)
    # a later nonce on the same (hotkey, uuid) is fine; an older one is not
    v.verify(headers(keys, nonce=now[0] + 1, uuid="a"), EMPTY_BODY_HASH)
    with pytest.raises(NotVerified):
        v.verify(headers(keys, nonce=now[0] - 5, uuid="a"), EMPTY_BODY_HASH)
    # another uuid has its own sequence
    v.verify(headers(keys, nonce=now[0] - 5, uuid="b"), EMPTY_BODY_HASH)


def test_verifier_stale_and_future_nonces(keys):
    now = [time.time_ns()]
    v = make_verifier(keys, now)
    stale = now[0] - ALLOWED_DELTA_NS - int(12e9) - 1
    with pytest.raises(NotVerified, match="too old"):
        v.verify(headers(keys, nonce=stale, timeout=12.0), EMPTY_BODY_HASH)
    # the window grows with the timeout, but the timeout is capped (it is not signed)
    v.verify(headers(keys, nonce=now[0] - int(10e9), timeout=12.0, uuid="t"), EMPTY_BODY_HASH)
    with pytest.raises(NotVerified, match="too old"):
        v.verify(headers(keys, nonce=now[0] - int(100e9), timeout=1e6, uuid="big"), EMPTY_BODY_HASH)
    with pytest.raises(NotVerified, match="future"):
        v.verify(headers(keys, nonce=now[0] + int(3600e9), uuid="f"), EMPTY_BODY_HASH)


def test_verifier_signature_cases(keys):
    now = [time.time_ns()]
    v = make_verifier(keys, now)
    # signed by another key
    bad = parse_headers(raw(signed_headers(keys["validator"], keys["miner"].ss58_address, signer=keys["stranger"])))
    with pytest.raises(NotVerified, match="signature mismatch"):
        v.verify(bad, EMPTY_BODY_HASH)
    # signed for another axon, but claims to be for us
    other = parse_headers(raw(signed_headers(keys["validator"], keys["miner"].ss58_address, sign_for=keys["miner2"].ss58_address)))
    with pytest.raises(NotVerified, match="signature mismatch"):
        v.verify(other, EMPTY_BODY_HASH)
    # addressed to another hotkey
    to_other = parse_headers(raw(signed_headers(keys["validator"], keys["miner2"].ss58_address)))
    with pytest.raises(NotVerified, match="addressed"):
        v.verify(to_other, EMPTY_BODY_HASH)
    # missing signature (9.12 would let it through)
    h = signed_headers(keys["validator"], keys["miner"].ss58_address)
    del h["bt_header_dendrite_signature"]
    with pytest.raises(NotVerified, match="missing"):
        v.verify(parse_headers(raw(h)), EMPTY_BODY_HASH)
    # wrong body hash claim
    h = signed_headers(keys["validator"], keys["miner"].ss58_address, body_hash="00" * 32)
    with pytest.raises(NotVerified, match="body hash"):
        v.verify(parse_headers(raw(h)), EMPTY_BODY_HASH)
    # a forged request does not advance the stored nonce: the genuine one still passes
    n = now[0] + 1000
    forged = parse_headers(raw(signed_headers(keys["validator"], keys["miner"].ss58_address, nonce=n + 5, uuid="z", signer=keys["stranger"])))
    with pytest.raises(NotVerified):
        v.verify(forged, EMPTY_BODY_HASH)
    v.verify(headers(keys, nonce=n, uuid="z"), EMPTY_BODY_HASH)


def test_nonce_store_prunes_old_and_bounds_size():
    s = NonceStore(max_entries=3)
    for i in range(5):
        s.put(("hk", str(i)), 100 + i, oldest_useful_ns=0)
    assert len(s) == 3 and s.get(("hk", "0")) is None
    s.put(("hk", "new"), 1000, oldest_useful_ns=500)
    assert len(s) == 1 and s.get(("hk", "new")) == 1000


def test_blacklist_reasons(keys, table):
    view = MetagraphView(fixed_metagraph(table))
    bl = Blacklist(view, min_stake=1000.0)
    with pytest.raises(Overloaded):  # not loaded yet: 503, not 500
        bl.check(keys["validator"].ss58_address)
    view.refresh_once()
    assert bl.check(keys["validator"].ss58_address).stake == 50_000.0
    for who, reason in [("stranger", "unknown"), ("poor", "low_stake"), ("nopermit", "no_permit")]:
        with pytest.raises(Blacklisted) as exc:
            bl.check(keys[who].ss58_address)
        assert exc.value.reason == reason and exc.value.http_status == 403
    assert Blacklist(view, 0.0, force_validator_permit=False).check(keys["nopermit"].ss58_address).stake == 90_000.0


def test_metagraph_keeps_last_good_copy_and_snapshot(tmp_path, keys, table):
    class Flaky:
        name = "flaky"

        def __init__(self):
            self.fail = False

        def fetch(self):
            if self.fail:
                raise ConnectionError("chain unreachable")
            return fixed_metagraph(table).fetch()

    src = Flaky()
    snap = tmp_path / "mg.json"
    view = MetagraphView(src, snapshot_path=str(snap))
    assert view.refresh_once() and snap.exists()
    src.fail = True
    assert not view.refresh_once()
    assert view.get(keys["validator"].ss58_address) is not None and "unreachable" in view.last_error
    # a restart during the outage starts from the saved copy
    fresh = MetagraphView(src, snapshot_path=str(snap))
    assert not fresh.refresh_once() and fresh.ready
    assert fresh.get(keys["validator"].ss58_address).stake == 50_000.0


def test_rate_limiter():
    t = [0.0]
    rl = RateLimiter(rate_per_s=1.0, burst=2, clock=lambda: t[0])
    rl.check("a")
    rl.check("a")
    with pytest.raises(RateLimited) as exc:
        rl.check("a")
    assert exc.value.http_status == 429
    rl.check("b")  # per key
    t[0] = 1.0
    rl.check("a")


def test_scheduler_serves_high_stake_first_and_refuses_low_stake_when_full():
    async def main():
        order = []
        sched = Scheduler(threads=1, max_queue=2, prior_ms=1.0)

        def job(name, deadline):
            time.sleep(0.05)
            order.append(name)
            return name

        far = time.monotonic() + 30
        first = asyncio.ensure_future(sched.submit(1.0, far, job, "first"))
        await asyncio.sleep(0.01)  # "first" is running; the rest queue
        low = asyncio.ensure_future(sched.submit(1.0, far, job, "low"))
        high = asyncio.ensure_future(sched.submit(100.0, far, job, "high"))
        await asyncio.sleep(0)
        mid = asyncio.ensure_future(sched.submit(50.0, far, job, "mid"))  # queue over 2: "low" is refused
        results = await asyncio.gather(first, low, high, mid, return_exceptions=True)
        assert isinstance(results[1], Overloaded)
        assert order == ["first", "high", "mid"]
        # a job that cannot finish before its deadline is refused, not run late
        sched.service_ms = 1000.0
        blocker = asyncio.ensure_future(sched.submit(1.0, far, job, "blocker"))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await sched.submit(1.0, time.monotonic() + 0.2, job, "late")
        await blocker
        sched.close()

    asyncio.run(main())


def test_example_config_loads():
    cfg = load_miner_config(REPO / "configs" / "miner.example.toml")
    assert len(cfg.hotkeys) >= 2 and cfg.chain.netuid == 72


@pytest.mark.parametrize(
    "text,match",
    [
        ("[[hotkeys]]\nport = 1\nwallet_name='a'\nwallet_hotkey='b'\nbogus = 1\n", "bogus"),
        ("hotkeys = []\n", "at least one"),
        ("[[hotkeys]]\nport = 8091\nwallet_name='a'\nwallet_hotkey='b'\n[[hotkeys]]\nport = 8091\nhotkey_file='x'\n", "ports must differ"),
        ("[[hotkeys]]\nport = 8091\n", "either hotkey_file"),
        ("[[hotkeys]]\nport = 8091\nhotkey_file='x'\n[chain]\nmetagraph='static'\n", "static_neurons"),
        ("[[hotkeys]]\nport = 8091\nhotkey_file='x'\n[policy]\nmin_stake='lots'\n", "min_stake"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, match):
    p = tmp_path / "miner.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_miner_config(p)


def test_job_whose_deadline_passed_in_the_queue_is_refused_with_503(table, jpeg):
    """The caller stops waiting at the deadline: a job that starts after it is DeadlineExceeded
    (503) without decoding; one that starts in time gets the full remaining time."""
    from streetcascade.errors import DeadlineExceeded
    from streetcascade.miner.state import MinerState
    from streetcascade.runtime import Cascade, ClassifierStage
    from streetcascade.runtime.backends.fake import FakeEngine

    engine = FakeEngine()
    state = MinerState(Cascade([ClassifierStage("stage1", engine, 224)]), MetagraphView(fixed_metagraph(table)))
    with pytest.raises(DeadlineExceeded, match="before inference could start") as info:
        state.job(jpeg(200), time.monotonic() - 0.001)
    assert info.value.http_status == 503 and engine.calls == 0
    assert state.job(jpeg(200), time.monotonic() + 5.0).stage == "stage1" and engine.calls == 1
