"""Which image front end decodes JPEGs: the native one (streetcascade._native, built from
CMakeLists.txt: libjpeg-turbo with DCT scaling, Pillow-exact resize, GIL released) when the
extension was built and imports, else the Python path (PIL, runtime/images.py). `describe()`
says which one runs (streetcascade info, doctor, classify -v).

Same pixels: `decode_image` through the native path decodes at Pillow's draft scale and
`resize_to` reproduces Pillow's BILINEAR arithmetic (pass order included), so both paths give
bit-identical arrays (tests/runtime/test_frontend.py). Only the fused `decode_resize_batch`
may decode at a finer DCT scale (M/8, the smallest at least the target), which moves pixels by
a few levels on images between 1x and 8x the target (docs/native.md states the tolerance).

STREETCASCADE_FRONTEND=python forces the Python path (A/B checks, or to rule the native code
out when chasing a problem); =native makes a missing extension an error instead of a fallback.
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType
from typing import Sequence

import numpy as np

from streetcascade.errors import BackendUnavailable, BadInput, ImageTooLarge

log = logging.getLogger(__name__)

ENV = "STREETCASCADE_FRONTEND"
_CHOICES = ("auto", "native", "python")
# Native status codes (native/jpeg_cpu.hpp, Status).
OK, NOT_JPEG, UNSUPPORTED, TOO_LARGE, TOO_SMALL, CORRUPT = range(6)
# DCT scale policies (native/jpeg_cpu.hpp, Scale).
SCALE_SMALLEST_AT_LEAST, SCALE_PIL_DRAFT = 0, 1
# Progressive JPEGs with more scans than this are refused (libjpeg-turbo's own TurboJPEG limit).
MAX_SCANS = 500

_module: ModuleType | None = None
_why_not = ""
_loaded = False
_lock = threading.Lock()
# Images the native path handed to PIL (not a JPEG, or a JPEG variant it cannot decode).
counters = {"native": 0, "fallback": 0}


def _load() -> None:
    global _module, _why_not, _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
        if choice not in _CHOICES:
            raise BackendUnavailable(f"{ENV}={choice!r}: expected one of {', '.join(_CHOICES)}")
        if choice == "python":
            _why_not = f"{ENV}=python"
        else:
            try:
                from streetcascade import _native
            except ImportError as exc:
                _why_not = f"extension not built ({exc})"
                if choice == "native":
                    raise BackendUnavailable(f"{ENV}=native but the native front end does not import: {exc}") from None
            else:
                _module = _native
        _loaded = True


def native_module() -> ModuleType | None:
    """streetcascade._native, or None when the Python path runs."""
    _load()
    return _module


def name() -> str:
    return "native" if native_module() is not None else "python"


def describe() -> str:
    """One line for logs and `streetcascade info`: which path decodes images, and why."""
    mod = native_module()
    if mod is not None:
        return f"native ({mod.INFO['jpeg']}, DCT scaling, Pillow-exact resize)"
    import PIL

    return f"python (PIL {PIL.__version__}; native: {_why_not})"


def _pass_order() -> int:
    import PIL

    # Pillow 13 runs the vertical pass first when the height shrinks much more than the width.
    return 1 if int(PIL.__version__.split(".")[0]) >= 13 else 0


def _max_pixels(limits) -> int:
    # decode_image turns PIL's own bomb warning (over Image.MAX_IMAGE_PIXELS) into an error:
    # the native path keeps the same ceiling.
    from PIL import Image

    pil_limit = Image.MAX_IMAGE_PIXELS
    return min(limits.max_pixels, pil_limit) if pil_limit else limits.max_pixels


def _count(key: str) -> None:
    with _lock:
        counters[key] += 1


def _raise(status: int, message: str) -> None:
    if status == TOO_LARGE:
        raise ImageTooLarge(message)
    if status == TOO_SMALL:
        raise BadInput(message)
    raise BadInput(f"corrupt or truncated image ({message[:160]})")


def decode_jpeg(data: bytes, limits, draft_size: int | None) -> np.ndarray | None:
    """JPEG bytes -> HxWx3 uint8 through the native path, at Pillow's draft scale (the same
    array decode_image's PIL path returns). None when the native path does not apply (no
    extension, JPEG not an accepted format, not a JPEG, a JPEG variant it cannot decode): the
    caller decodes with PIL. Raises BadInput / ImageTooLarge like the PIL path."""
    mod = native_module()
    if mod is None or "JPEG" not in limits.formats or bytes(data[:3]) != b"\xff\xd8\xff":
        return None
    status, message, rgb = mod.decode(bytes(data), draft_size or 0, _max_pixels(limits), limits.min_side, MAX_SCANS,
                                      SCALE_PIL_DRAFT, _pass_order())
    if status == OK:
        _count("native")
        return rgb
    if status in (NOT_JPEG, UNSUPPORTED):
        _count("fallback")
        log.debug("native front end hands a JPEG to PIL: %s", message)
        return None
    _raise(status, message)


def resize(rgb: np.ndarray, size: int) -> np.ndarray | None:
    """Pillow-exact BILINEAR resize of an HxWx3 uint8 array to size x size, or None without
    the extension."""
    mod = native_module()
    if mod is None:
        return None
    if rgb.strides[2] != 1 or rgb.strides[1] != 3:
        rgb = np.ascontiguousarray(rgb)
    out = np.empty((size, size, 3), dtype=np.uint8)
    mod.resize_into(rgb, out, _pass_order())
    return out


def decode_resize_batch(images: Sequence[bytes], out: np.ndarray, limits, threads: int = 2,
                        scale: int = SCALE_SMALLEST_AT_LEAST) -> list[Exception | None]:
    """Decode + resize JPEGs straight into out[:len(images)] (uint8 [N, S, S, 3], e.g. an
    engine's pinned input) on `threads` threads, the GIL released. One entry per image: None
    when it landed in its slot, else the error (BadInput / ImageTooLarge, or BackendUnavailable
    for a non-JPEG the caller must decode another way). Raises BackendUnavailable without the
    extension."""
    mod = native_module()
    if mod is None:
        raise BackendUnavailable(f"native front end unavailable: {_why_not}")
    results = mod.decode_resize_batch([bytes(b) for b in images], out, threads, _max_pixels(limits), limits.min_side,
                                      MAX_SCANS, scale, _pass_order())
    errors: list[Exception | None] = []
    for status, message in results:
        if status == OK:
            errors.append(None)
        elif status in (NOT_JPEG, UNSUPPORTED):
            errors.append(BackendUnavailable(f"not for the native front end: {message}"))
        else:
            try:
                _raise(status, message)
            except BadInput as exc:
                errors.append(exc)
    return errors
