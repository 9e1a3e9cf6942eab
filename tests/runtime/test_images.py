import io

import numpy as np
import pytest
from PIL import Image
from streetcascade.runtime.images import SAFE_IMAGE_FORMATS, ImageLimits, decode_image, resize_to

from streetcascade.errors import BadInput, ImageTooLarge


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decodes_sample_jpeg_to_rgb_uint8(sample_bytes):
    data = sample_bytes["street-barrier.jpg"]
    arr = decode_image(data)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert arr.shape[:2] == Image.open(io.BytesIO(data)).size[::-1]


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"hello, I am not an image", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image"),
])
def test_rejects_non_images_with_one_line(data, message):
    with pytest.raises(BadInput) as info:
        decode_image(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_rejects_non_bytes():
    with pytest.raises(BadInput, match="must be bytes"):
        decode_image("a string")


def test_truncated_jpeg_is_bad_input(sample_bytes):
    data = sample_bytes["street-barrier.jpg"]
    with pytest.raises(BadInput, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_too_many_compressed_bytes():
    with pytest.raises(ImageTooLarge, match="over the limit"):
        decode_image(b"\xff" * 2048, ImageLimits(max_bytes=1024))


def test_decompression_bomb_refused_before_decoding():
    # 20000 x 20000 1-bit PNG: a few KB compressed, 400 M pixels decoded. Over PIL's own
    # process-wide limit too, which fires first, at open: still our error class.
    data = encode(Image.new("1", (20000, 20000)), "PNG")
    assert len(data) < 200_000
    with pytest.raises(ImageTooLarge, match="400000000 pixels"):
        decode_image(data)
    # Under PIL's limit, over ours: our check, from the header.
    small_bomb = encode(Image.new("1", (9000, 9000)), "PNG")
    with pytest.raises(ImageTooLarge, match="9000x9000 = 81000000 pixels, over the limit of 64000000"):
        decode_image(small_bomb)


def test_pil_global_limit_is_left_alone():
    import PIL.Image
    import streetcascade.runtime.images  # noqa: F401

    assert PIL.Image.MAX_IMAGE_PIXELS == 89_478_485  # PIL's default: other code keeps its bomb guard


def test_one_by_one_image_is_handled():
    arr = decode_image(encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"))
    assert arr.shape == (1, 1, 3)
    assert resize_to(arr, 224).shape == (224, 224, 3)
    assert tuple(resize_to(arr, 224)[100, 100]) == (200, 10, 10)


def test_huge_jpeg_decodes_at_reduced_scale_with_draft():
    big = Image.new("L", (8000, 8000), 90)  # the default pixel limit, exactly
    data = encode(big, "JPEG", quality=50)
    arr = decode_image(data, draft_size=224)
    assert arr.shape[2] == 3 and max(arr.shape[:2]) <= 8000 // 8 + 1
    assert abs(int(arr.mean()) - 90) <= 2


def test_cmyk_jpeg_converts_to_rgb():
    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # pure red in CMYK
    arr = decode_image(encode(cmyk, "JPEG", quality=95))
    assert arr.shape == (16, 32, 3)
    r, g, b = arr[8, 16].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_not_clipped():
    values = np.full((8, 8), 0x8000, dtype=np.uint16)  # half scale
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    arr = decode_image(encode(img, "PNG"))
    assert arr.shape == (8, 8, 3)
    assert abs(int(arr[0, 0, 0]) - 128) <= 1  # clipping would give 255


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I", "F"])
def test_other_modes_become_rgb(mode):
    img = Image.new(mode, (10, 12))
    fmt = "TIFF" if mode in ("F", "I") else "PNG"
    arr = decode_image(encode(img, fmt))
    assert arr.shape == (12, 10, 3) and arr.dtype == np.uint8


def test_webp_is_supported():
    arr = decode_image(encode(Image.new("RGB", (20, 20), (0, 0, 255)), "WEBP", quality=90))
    assert arr.shape == (20, 20, 3) and arr[10, 10, 2] > 200


def test_resize_rejects_wrong_arrays():
    with pytest.raises(BadInput):
        resize_to(np.zeros((4, 4), dtype=np.uint8), 224)
    with pytest.raises(BadInput):
        resize_to(np.zeros((4, 4, 3), dtype=np.float32), 224)


@pytest.mark.parametrize("fmt", sorted(SAFE_IMAGE_FORMATS))
def test_corrupt_files_in_every_format_are_bad_input(fmt):
    """Seeded byte mutations of a valid file: every outcome is an array or one of our errors,
    whatever PIL's parser raises inside (RuntimeError, struct.error, IndexError ...)."""
    rng = np.random.default_rng(sum(map(ord, fmt)))
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    if fmt == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, fmt)
    good = np.frombuffer(buf.getvalue(), np.uint8)
    refused = 0
    for _ in range(300):
        data = good.copy()
        idx = rng.integers(0, len(data), int(rng.integers(1, 12)))
        data[idx] = rng.integers(0, 256, len(idx), dtype=np.uint8)
        if rng.random() < 0.3:
            data = data[: int(rng.integers(8, len(data)))]
        try:
            out = decode_image(data.tobytes())
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        except BadInput:
            refused += 1
    assert refused > 0


def test_a_parser_raising_anything_is_bad_input(monkeypatch):
    from PIL import JpegImagePlugin

    def broken(self, *a, **k):
        raise NotImplementedError("this JPEG variant")

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", broken)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    with pytest.raises(BadInput, match="NotImplementedError"):
        decode_image(buf.getvalue())


def test_formats_outside_the_allowlist_are_never_opened():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "TIFF")
    assert decode_image(buf.getvalue()).shape == (8, 8, 3)  # allowed by default (CLI, datasets)
    with pytest.raises(BadInput, match="accepted format"):
        decode_image(buf.getvalue(), ImageLimits(formats=("JPEG", "PNG", "WEBP")))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(BadInput, match="accepted format"):
        decode_image(eps)
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, "ICO")  # a format PIL opens but validators never send
    with pytest.raises(BadInput, match="accepted format"):
        decode_image(ico.getvalue())
