"""Decode untrusted image bytes into RGB uint8 arrays, with size limits.

Two phases: `decode_image` turns bytes (JPEG/PNG/WebP/..., any mode) into an HxWx3 uint8
array after checking compressed size and pixel count *before* decoding pixels (the
decompression-bomb guard); `resize_to` brings it to a model's square input size.
"""

from __future__ import annotations

import io
import warnings

import msgspec
import numpy as np
from PIL import Image, UnidentifiedImageError

from streetcascade.errors import BadInput, ImageTooLarge

# What counts as an image file when walking a folder (CLI, parity images, datasets).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# The PIL formats we ever let PIL try (the same set as IMAGE_SUFFIXES). Everything else stays
# unopened: above all EPS/PostScript, which PIL hands to Ghostscript, and the many rarely used
# parsers nobody needs for street photos.
SAFE_IMAGE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"})


class ImageLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Checked on every call, from the header, before any pixel is decoded. PIL's own
    process-wide limit (`Image.MAX_IMAGE_PIXELS`, ~89.5M pixels by default) is left as it is
    and applies too, so the default here stays below it."""

    max_bytes: int = 20 * 1024 * 1024
    # 8000 x 8000 fits; the miner uses a much smaller limit (validators send 224 x 224).
    max_pixels: int = 64_000_000
    min_side: int = 1
    # PIL format names tried when opening; anything else is "not an image" (miner: JPEG, PNG, WEBP).
    formats: tuple[str, ...] = tuple(sorted(SAFE_IMAGE_FORMATS))


DEFAULT_LIMITS = ImageLimits()


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS, draft_size: int | None = None) -> np.ndarray:
    """Return an HxWx3 uint8 RGB array, or raise BadInput / ImageTooLarge with one line.

    `draft_size` lets JPEG decode at a reduced scale (DCT scaling) when the image is much
    larger than the model input: a 10000 x 10000 JPEG then costs ~1/64 of its full decode.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadInput(f"image must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise BadInput("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes, over the limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            # PIL warns about odd files (corrupt EXIF, truncated chunks): from untrusted bytes
            # that is noise a sender could print per request. Only its bomb warning matters.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=limits.formats)
            width, height = img.size  # header only: no pixels decoded yet
            if width * height > limits.max_pixels:
                raise ImageTooLarge(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}"
                )
            if min(width, height) < limits.min_side:
                raise BadInput(f"image is {width}x{height}, smaller than {limits.min_side} px on a side")
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
    except (ImageTooLarge, BadInput):
        raise
    except UnidentifiedImageError:
        raise BadInput(f"not an image in an accepted format ({', '.join(limits.formats)})") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:  # PIL's own limit, hit at open
        raise ImageTooLarge(f"image over the pixel limit: {exc}") from None
    except MemoryError:
        raise ImageTooLarge("image needs more memory to decode than is available") from None
    except Exception as exc:
        # Untrusted bytes: PIL's parsers raise OSError, SyntaxError and ValueError for corrupt
        # files, but also RuntimeError, NotImplementedError, struct.error, IndexError,
        # AttributeError ... Any of them means the same thing here.
        raise BadInput(f"corrupt or truncated image ({type(exc).__name__}: {str(exc)[:120]})") from None
    try:
        return _to_rgb_uint8(img)
    except Exception as exc:  # a mode conversion of a malformed file (e.g. a bad palette)
        raise BadInput(f"image cannot be converted to RGB ({type(exc).__name__}: {str(exc)[:120]})") from None


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-/32-bit greyscale: PIL's convert("RGB") clips instead of scaling; scale by the type's range.
        arr = np.asarray(img, dtype=np.uint32 if mode == "I" else np.uint16)
        shift = 24 if mode == "I" and arr.max(initial=0) > 0xFFFF else 8
        grey = (arr >> shift).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32))
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        grey = ((arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGB")  # CMYK, P, L, LA, RGBA, YCbCr ... (alpha dropped)
    return np.asarray(img, dtype=np.uint8)


def resize_to(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 array to size x size (bilinear, aspect not kept, like HF's ViT processors)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise BadInput(f"expected an HxWx3 uint8 RGB array, got shape {rgb.shape} dtype {rgb.dtype}")
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.uint8)
