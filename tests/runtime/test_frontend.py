"""The native image front end (streetcascade._native) against the Python path (PIL): same
pixels, same errors, never a crash on bad bytes. Skips when the extension is not built, unless
STREETCASCADE_FRONTEND=native (CI) makes its absence a failure."""

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streetcascade.errors import BackendUnavailable, BadInput, ImageTooLarge
from streetcascade.runtime import frontend
from streetcascade.runtime.images import DEFAULT_LIMITS, ImageLimits, decode_image, resize_to

SAMPLES = Path(__file__).resolve().parents[2] / "samples"

if os.environ.get(frontend.ENV) != "native":
    pytest.importorskip("streetcascade._native", reason="native front end not built (pip install . with a C++ compiler and libjpeg-turbo)")


@pytest.fixture
def python_path(monkeypatch):
    """Run decode_image / resize_to through PIL only, as without the extension."""
    monkeypatch.setattr(frontend, "_module", None)
    monkeypatch.setattr(frontend, "_loaded", True)


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def inputs() -> dict[str, bytes]:
    """The samples, validator-style 224 x 224 JPEGs, odd sizes (both pass orders of Pillow's
    resize, every draft scale), and the JPEG variants (greyscale, CMYK, progressive, 4:4:4)."""
    out = {p.name: p.read_bytes() for p in sorted(SAMPLES.glob("*.jpg"))}
    base = Image.open(SAMPLES / "street-barrier.jpg").convert("RGB")
    for p in sorted(SAMPLES.glob("*.jpg"))[:4]:  # the validators' level 0: centre square, 224, default quality
        img = Image.open(p).convert("RGB")
        side = min(img.size)
        out[f"validator-{p.stem}"] = jpeg(img.crop((0, 0, side, side)).resize((224, 224), Image.BILINEAR))
    for size in [(225, 300), (300, 225), (230, 700), (1000, 750), (1900, 240), (100, 80), (1, 1)]:
        out[f"{size[0]}x{size[1]}"] = jpeg(base.resize(size), quality=88)
    out["grey"] = jpeg(base.convert("L"))
    out["cmyk"] = jpeg(base.convert("CMYK"))
    out["progressive"] = jpeg(base, progressive=True)
    out["444"] = jpeg(base, subsampling=0)
    return out


INPUTS = inputs()


def test_says_which_path_runs(monkeypatch):
    assert frontend.name() == "native"
    assert frontend.describe().startswith("native (libjpeg-turbo ")
    monkeypatch.setattr(frontend, "_module", None)
    monkeypatch.setattr(frontend, "_loaded", True)
    assert frontend.name() == "python" and frontend.describe().startswith("python (PIL ")


def test_environment_variable_chooses_the_path(monkeypatch):
    monkeypatch.setattr(frontend, "_loaded", False)
    monkeypatch.setattr(frontend, "_module", None)
    monkeypatch.setenv(frontend.ENV, "python")
    assert frontend.name() == "python" and "STREETCASCADE_FRONTEND=python" in frontend.describe()
    monkeypatch.setattr(frontend, "_loaded", False)
    monkeypatch.setenv(frontend.ENV, "gpu-please")
    with pytest.raises(BackendUnavailable, match="expected one of auto, native, python"):
        frontend.name()
    monkeypatch.setattr(frontend, "_loaded", False)
    monkeypatch.setenv(frontend.ENV, "auto")
    assert frontend.name() == "native"


@pytest.mark.parametrize("key", sorted(INPUTS))
def test_same_pixels_as_the_python_path(key, monkeypatch):
    """Tolerance 0: decode_image (at every draft size the runtime uses) and resize_to give
    bit-identical arrays through both paths."""
    data = INPUTS[key]
    native = {d: decode_image(data, draft_size=d) for d in (None, 224)}
    resized = {d: resize_to(native[d], 224) for d in native}
    monkeypatch.setattr(frontend, "_module", None)
    monkeypatch.setattr(frontend, "_loaded", True)
    for d in native:
        ref = decode_image(data, draft_size=d)
        assert native[d].shape == ref.shape and np.array_equal(native[d], ref), (key, d)
        assert np.array_equal(resized[d], resize_to(ref, 224)), (key, d)


def test_fused_batch_matches_within_the_stated_tolerance():
    """decode_resize_batch decodes at the smallest M/8 DCT scale at least the target: identical
    where that is Pillow's draft scale (224 x 224, the samples at 320 x 240, 1/8 of a large
    photo), a few levels off between (docs/native.md: mean |diff| < 2, max < 40)."""
    keys = sorted(INPUTS)
    out = np.zeros((len(keys), 224, 224, 3), np.uint8)
    errors = frontend.decode_resize_batch([INPUTS[k] for k in keys], out, DEFAULT_LIMITS, threads=2)
    assert errors == [None] * len(keys)
    for i, key in enumerate(keys):
        ref = resize_to(decode_image(INPUTS[key], draft_size=224), 224).astype(int)
        diff = np.abs(out[i].astype(int) - ref)
        if key.startswith("validator") or key in ("street-barrier.jpg", "parking-sign.jpg", "300x225"):
            assert diff.max() == 0, key
        assert diff.mean() < 2.0 and diff.max() < 40, (key, diff.mean(), diff.max())


def test_batch_reports_each_image_on_its_own():
    good = INPUTS["street-barrier.jpg"]
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    out = np.full((4, 224, 224, 3), 7, np.uint8)
    errors = frontend.decode_resize_batch([good, good[: len(good) // 2], png.getvalue(), good], out, DEFAULT_LIMITS)
    assert errors[0] is None and errors[3] is None
    assert isinstance(errors[1], BadInput) and "truncated" in str(errors[1])
    assert isinstance(errors[2], BackendUnavailable)  # not a JPEG: the caller decodes it with PIL
    assert (out[2] == 7).all() and np.array_equal(out[0], out[3])


def test_truncated_and_corrupt_jpegs_are_bad_input():
    data = INPUTS["street-barrier.jpg"]
    with pytest.raises(BadInput, match="corrupt or truncated image \\(truncated JPEG"):
        decode_image(data[: len(data) // 2])
    with pytest.raises(BadInput, match="corrupt or truncated"):
        decode_image(b"\xff\xd8\xff\xe0\x00\x02\x12\x34\x56")


def test_corrupt_jpegs_never_crash_the_process():
    """Seeded mutations: each outcome is an array or our BadInput (libjpeg's fatal errors
    longjmp back; its warnings stay silent), and the decoder keeps working afterwards."""
    rng = np.random.default_rng(7)
    good = np.frombuffer(INPUTS["parking-sign.jpg"], np.uint8)
    refused = 0
    for _ in range(200):
        data = good.copy()
        idx = rng.integers(0, len(data), int(rng.integers(1, 12)))
        data[idx] = rng.integers(0, 256, len(idx), dtype=np.uint8)
        if rng.random() < 0.3:
            data = data[: int(rng.integers(8, len(data)))]
        try:
            out = decode_image(data.tobytes(), draft_size=224)
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        except BadInput:
            refused += 1
    assert refused > 0
    assert np.array_equal(decode_image(good.tobytes()), decode_image(INPUTS["parking-sign.jpg"]))


def test_huge_dimensions_are_refused_from_the_header():
    data = bytearray(INPUTS["street-barrier.jpg"])
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2  # height, width
    with pytest.raises(ImageTooLarge, match="60000x60000 = 3600000000 pixels, over the limit of 64000000"):
        decode_image(bytes(data))
    with pytest.raises(ImageTooLarge, match="320x240 = 76800 pixels, over the limit of 1000"):
        decode_image(INPUTS["street-barrier.jpg"], ImageLimits(max_pixels=1000))
    with pytest.raises(BadInput, match="smaller than 300 px on a side"):
        decode_image(INPUTS["street-barrier.jpg"], ImageLimits(min_side=300))


def test_other_formats_and_unsupported_jpegs_fall_back_to_pil():
    png = io.BytesIO()
    Image.new("RGB", (20, 10), (0, 0, 255)).save(png, "PNG")
    before = dict(frontend.counters)
    arr = decode_image(png.getvalue())
    assert arr.shape == (10, 20, 3) and arr[5, 5, 2] == 255
    # A 12-bit JPEG header: this 8-bit libjpeg cannot; PIL gets its turn (and refuses it too).
    data = bytearray(INPUTS["street-barrier.jpg"])
    data[data.index(b"\xff\xc0") + 4] = 12
    with pytest.raises(BadInput):
        decode_image(bytes(data))
    assert frontend.counters["fallback"] == before["fallback"] + 1
    # JPEG not among the accepted formats: refused as PIL refuses it, the native path not asked.
    with pytest.raises(BadInput, match="accepted format"):
        decode_image(INPUTS["street-barrier.jpg"], ImageLimits(formats=("PNG",)))


def test_decoding_releases_the_gil():
    """While one thread decodes a large photo natively, Python code in another keeps running:
    the longest pause the main thread sees is a fraction of the decode (with the GIL held it
    would be all of it)."""
    rng = np.random.default_rng(0)
    big = np.clip(np.asarray(Image.open(SAMPLES / "street-barrier.jpg").convert("RGB").resize((2400, 1800)), dtype=np.int16)
                  + rng.normal(0, 4, (1800, 2400, 3)), 0, 255).astype(np.uint8)
    data = [jpeg(Image.fromarray(big), quality=90)] * 4
    out = np.zeros((4, 224, 224, 3), np.uint8)
    span = {}

    def work():
        t0 = time.perf_counter()
        frontend.decode_resize_batch(data, out, DEFAULT_LIMITS, threads=1)
        span["s"] = time.perf_counter() - t0

    thread = threading.Thread(target=work)
    last, gap = time.perf_counter(), 0.0
    thread.start()
    while thread.is_alive():
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    thread.join()
    assert gap < 0.5 * span["s"], (gap, span["s"])
