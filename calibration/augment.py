"""The validators' augmentation levels 0-3, reproduced with numpy + Pillow.

Source: natixnetwork/streetvision-subnet v2.0.4 (commit 28a1755), `natix/utils/image_transforms.py`
(`apply_augmentation_by_level`, `get_base_transforms`, `get_random_augmentations[_medium|_hard]`,
the DeeperForensics distortion functions) and `natix/protocol.py` (`prepare_image_synapse`).
What the validator does, step by step, and what this module does at each step:

- level drawn with probability 1/4 each (`np.random.random()` against cumulative 0.25/0.5/0.75/1).
- L0 (`get_base_transforms`): PIL convert RGB, torchvision CenterCrop(min side) (offsets
  `int(round((H - m) / 2))`, Python rounding), Resize((224, 224)) = PIL BILINEAR on uint8.
  Done here with Pillow itself, so it is exact.
- L1 (`get_random_augmentations`), on the float tensor x/255 of the full-size image:
  1. RandomRotationWithParams(20): angle ~ U(-20, 20) degrees. The class is built with
     interpolation=BILINEAR but its forward calls `F.rotate(img, angle)` without it, so the
     rotation is NEAREST, expand=False, fill 0 (black corners). Reproduced: torchvision's inverse
     affine grid + grid_sample(nearest, align_corners=False) in float32.
  2. RandomResizedCrop(224, scale=(0.2, 1.0), ratio=(1, 1)): torchvision's `get_params` (10 tries
     of a square of area U(0.2, 1) * H * W that fits, else the central max square) and
     `resized_crop` = bilinear with antialias on the float tensor. Reproduced with the same
     (PIL/torch) antialiased triangle-filter weights, float32.
  3. RandomHorizontalFlipWithParams / RandomVerticalFlipWithParams: their `__init__` sets
     `self.params = {}`, so `forward` always takes the "replay" branch with no `do_flip` and
     NEVER flips. `VALIDATOR_FLIP_P = 0.0` reproduces that; pass `flip_p=DOCUMENTED_FLIP_P`
     (0.5, the intended torchvision default) to train/evaluate for a fixed validator.
- L2 (`..._medium`): L1, then DeeperForensics CS, CC, JPEG each at a level drawn from {0, 1}
  (`random.randint(0, 1)`), in that order.
- L3 (`..._hard`): L1, then CS, CC, JPEG, GNC, GB each at a level from {0, 1, 2}, in that order.
  Level 0 = not applied. Parameters (level 1, 2): CS 0.4, 0.3; CC 0.85, 0.725; JPEG 2, 3;
  GNC 0.001, 0.002; GB 7, 9.
  Each applied distortion converts the tensor to BGR uint8 with `(x * 255).astype(uint8)`
  (truncation), runs the OpenCV-based function, and converts back to x/255. Reproduced:
  saturation / noise with OpenCV's float YCrCb coefficients, contrast exactly, "JPEG"
  (cv2.resize down by the factor and back up, INTER_LINEAR; OpenCV switches an exact 2x
  shrink to INTER_AREA) and GaussianBlur(k, sigma=k/6, BORDER_REFLECT_101) in OpenCV's
  fixed-point arithmetic.
- Final: `ToPILImage` = `(x * 255).byte()` (truncation) and `image.save(JPEG)` (Pillow default
  quality 75): `encode_like_validator`. `augment` returns the pixels before that JPEG step.

Deviations (tested in tests/calibration/test_calib_augment.py against OpenCV when installed):
- Random numbers come from one `np.random.Generator`, not the validator's mix of torch, numpy
  and `random` global states: same distributions, different streams.
- Float arithmetic follows torch/OpenCV in float32 but not their exact SIMD operation order, so
  a pixel may differ by 1 grey level where a value sits on a truncation boundary.
- `mask_center` (keep a point inside the crop) is not reproduced: the subnet's generator always
  sets it to None.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from streetcascade.errors import BadInput

TARGET_SIZE = 224
LEVELS = (0, 1, 2, 3)
LEVEL_PROBS = (0.25, 0.25, 0.25, 0.25)
ROTATION_DEGREES = 20.0
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (1.0, 1.0)
VALIDATOR_FLIP_P = 0.0  # what the validator's flip classes actually do (see module doc)
DOCUMENTED_FLIP_P = 0.5  # what they were meant to do
JPEG_QUALITY = 75  # Pillow's default, used by prepare_image_synapse

# DeeperForensics parameters, index = level - 1 (natix get_distortion_parameter).
DISTORTION_PARAMS: dict[str, tuple[float, ...]] = {
    "CS": (0.4, 0.3, 0.2, 0.1, 0.0),
    "CC": (0.85, 0.725, 0.6, 0.475, 0.35),
    "BW": (16, 32, 48, 64, 80),
    "GNC": (0.001, 0.002, 0.005, 0.01, 0.05),
    "GB": (7, 9, 13, 17, 21),
    "JPEG": (2, 3, 4, 5, 6),
}
# Per augmentation level: (distortion, highest level drawn), in the validator's order.
LEVEL_DISTORTIONS: dict[int, tuple[tuple[str, int], ...]] = {
    0: (),
    1: (),
    2: (("CS", 1), ("CC", 1), ("JPEG", 1)),
    3: (("CS", 2), ("CC", 2), ("JPEG", 2), ("GNC", 2), ("GB", 2)),
}

_F32 = np.float32


def augment(rgb: np.ndarray, level: int, rng: np.random.Generator, *, flip_p: float = VALIDATOR_FLIP_P) -> np.ndarray:
    """Apply one validator augmentation level; returns 224x224x3 uint8 RGB (before the JPEG)."""
    return augment_with_params(rgb, level, rng, flip_p=flip_p)[0]


def draw_level(rng: np.random.Generator, probs: Sequence[float] = LEVEL_PROBS) -> int:
    # The validator compares one uniform draw against the cumulative probabilities.
    u = rng.random()
    cumulative = 0.0
    for level, p in zip(LEVELS, probs):
        cumulative += p
        if u <= cumulative:
            return level
    return LEVELS[-1]


def augment_with_params(
    rgb: np.ndarray, level: int, rng: np.random.Generator, *, flip_p: float = VALIDATOR_FLIP_P
) -> tuple[np.ndarray, dict]:
    """`augment`, also returning the drawn parameters (like the validator's `data_aug_params`)."""
    _check_rgb(rgb)
    params = draw_params(rgb.shape[0], rgb.shape[1], level, rng, flip_p=flip_p)
    return apply_params(rgb, params, rng), params


def draw_params(height: int, width: int, level: int, rng: np.random.Generator, *, flip_p: float = VALIDATOR_FLIP_P) -> dict:
    """Draw every random choice of one augmentation (except per-pixel noise) for an HxW image.

    Keys: level; for levels >= 1 angle (degrees), crop (top, left, h, w), hflip, vflip; and per
    distortion of the level its drawn distortion level (0 = not applied).
    """
    if level not in LEVELS:
        raise BadInput(f"augmentation level must be one of {LEVELS}, got {level!r}")
    if level == 0:
        return {"level": 0}
    params: dict = {"level": level, "angle": float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))}
    params["crop"] = random_resized_crop_params(height, width, rng)
    params["hflip"] = bool(rng.random() < flip_p)
    params["vflip"] = bool(rng.random() < flip_p)
    for name, highest in LEVEL_DISTORTIONS[level]:
        params[name] = int(rng.integers(0, highest + 1))  # random.randint(0, highest): inclusive
    return params


def apply_params(rgb: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    """Apply drawn parameters in the validator's order; `rng` supplies the colour noise."""
    _check_rgb(rgb)
    level = params["level"]
    if level == 0:
        return center_crop_resize(rgb)
    rotated = rotate_nearest(rgb, params["angle"])
    top, left, side_h, side_w = params["crop"]
    x = resized_crop(rotated.astype(_F32) / _F32(255.0), top, left, side_h, side_w, TARGET_SIZE)
    if params["hflip"]:
        x = x[:, ::-1]
    if params["vflip"]:
        x = x[::-1]
    for name, _ in LEVEL_DISTORTIONS[level]:
        dlevel = params[name]
        if dlevel == 0:
            continue  # not applied: the tensor is left untouched (no uint8 round trip)
        bgr = _to_uint8(x[:, :, ::-1])
        bgr = apply_distortion(bgr, name, dlevel, rng)
        x = bgr[:, :, ::-1].astype(_F32) / _F32(255.0)
    return np.ascontiguousarray(_to_uint8(x))


def encode_like_validator(rgb: np.ndarray) -> bytes:
    """The JPEG bytes a validator would send for these pixels (Pillow default quality 75)."""
    _check_rgb(rgb)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def _check_rgb(rgb: object) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise BadInput(f"expected an HxWx3 uint8 RGB array, got {got}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise BadInput(f"image has no pixels ({rgb.shape[1]}x{rgb.shape[0]})")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # torch `(x * 255).byte()` / numpy `.astype(uint8)`: truncation toward zero.
    return np.clip(x * _F32(255.0), 0.0, 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------- level 0


def center_crop_resize(rgb: np.ndarray, size: int = TARGET_SIZE) -> np.ndarray:
    height, width = rgb.shape[:2]
    side = min(height, width)
    top = int(round((height - side) / 2.0))  # torchvision center_crop, Python (banker's) rounding
    left = int(round((width - side) / 2.0))
    img = Image.fromarray(np.ascontiguousarray(rgb), "RGB").crop((left, top, left + side, top + side))
    return np.asarray(img.resize((size, size), Image.BILINEAR))


# ---------------------------------------------------------------------------------- geometry


def rotate_nearest(rgb: np.ndarray, angle_deg: float) -> np.ndarray:
    """torchvision `F.rotate(tensor, angle)` with its defaults: nearest, same size, black fill.

    Positive angles turn the picture counter-clockwise. Nearest sampling only copies pixels,
    so working on uint8 is exact w.r.t. the validator's float tensor.
    """
    height, width = rgb.shape[:2]
    rot = math.radians(-angle_deg)  # torchvision passes -angle to its inverse affine matrix
    m = (math.cos(rot), math.sin(rot), -math.sin(rot), math.cos(rot))  # [d, -b, -c, a]
    # _gen_affine_grid: pixel-centre grid, theta rescaled by half the size, then grid_sample's
    # unnormalize (g + 1) * size / 2 - 0.5; all in float32 like torch.
    xs = np.linspace(-width * 0.5 + 0.5, width * 0.5 - 0.5, width, dtype=_F32)
    ys = np.linspace(-height * 0.5 + 0.5, height * 0.5 - 0.5, height, dtype=_F32)[:, None]
    half_w, half_h = _F32(0.5 * width), _F32(0.5 * height)
    gx = xs * (_F32(m[0]) / half_w) + ys * (_F32(m[1]) / half_w)
    gy = xs * (_F32(m[2]) / half_h) + ys * (_F32(m[3]) / half_h)
    ix = np.rint((gx + _F32(1.0)) * _F32(width / 2) - _F32(0.5)).astype(np.int64)  # rint: half-to-even
    iy = np.rint((gy + _F32(1.0)) * _F32(height / 2) - _F32(0.5)).astype(np.int64)
    inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    out = np.zeros_like(rgb)
    out[inside] = rgb[iy[inside], ix[inside]]
    return out


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision `RandomResizedCrop.get_params` with scale (0.2, 1) and ratio (1, 1): (top, left, h, w)."""
    area = height * width
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target_area = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi)) if log_hi > log_lo else 1.0
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the central crop of the allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < min(CROP_RATIO):
        w = width
        h = int(round(w / min(CROP_RATIO)))
    elif in_ratio > max(CROP_RATIO):
        h = height
        w = int(round(h * max(CROP_RATIO)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(x: np.ndarray, top: int, left: int, h: int, w: int, size: int) -> np.ndarray:
    """Crop then resize a float HxWxC image to size x size, bilinear with antialias (torch/PIL)."""
    crop = x[top : top + h, left : left + w]
    rows_idx, rows_w = _aa_bilinear_taps(h, size)
    cols_idx, cols_w = _aa_bilinear_taps(w, size)
    # Horizontal pass then vertical, each a weighted sum over a few taps (the filter is banded).
    tmp = crop[:, cols_idx[:, 0]] * cols_w[None, :, 0, None]
    for k in range(1, cols_idx.shape[1]):
        tmp += crop[:, cols_idx[:, k]] * cols_w[None, :, k, None]
    out = tmp[rows_idx[:, 0]] * rows_w[:, 0, None, None]
    for k in range(1, rows_idx.shape[1]):
        out += tmp[rows_idx[:, k]] * rows_w[:, k, None, None]
    return out.astype(_F32, copy=False)


def _aa_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index, the input indices and weights of PIL's / torch's antialiased bilinear filter.

    Returns (out_size, taps) index and float32 weight arrays; unused taps have weight 0.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)  # bilinear support 1, stretched by the downscale factor
    inv = 1.0 / max(scale, 1.0)
    centers = scale * (np.arange(out_size) + 0.5)
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    taps = int((xmax - xmin).max())
    j = np.arange(taps)
    idx = xmin[:, None] + j[None, :]
    weights = np.clip(1.0 - np.abs((idx - centers[:, None] + 0.5) * inv), 0.0, None)
    weights[idx >= xmax[:, None]] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return np.minimum(idx, in_size - 1), weights.astype(_F32)


# ---------------------------------------------------------------------------------- distortions


def apply_distortion(bgr: np.ndarray, name: str, level: int, rng: np.random.Generator) -> np.ndarray:
    """One DeeperForensics distortion at `level` (1-5) on a BGR uint8 image, as the validator does."""
    if name not in DISTORTION_PARAMS:
        raise BadInput(f"unknown distortion {name!r}; known: {sorted(DISTORTION_PARAMS)}")
    if not 1 <= level <= 5:
        raise BadInput(f"distortion level must be 1-5, got {level!r}")
    param = DISTORTION_PARAMS[name][level - 1]
    if name == "CS":
        return color_saturation(bgr, param)
    if name == "CC":
        return color_contrast(bgr, param)
    if name == "JPEG":
        return down_up_jpeg(bgr, int(param))
    if name == "GNC":
        return gaussian_noise_color(bgr, param, rng)
    if name == "GB":
        return gaussian_blur(bgr, int(param))
    return block_wise(bgr, int(param), rng)


# OpenCV's float BGR<->YCrCb coefficients (color_yuv: R2YF.., YCRF, YCBF, CR2RF..) and delta 0.5.
_Y_B, _Y_G, _Y_R = _F32(0.114), _F32(0.587), _F32(0.299)
_CR, _CB = _F32(0.713), _F32(0.564)
_CR2R, _CR2G, _CB2G, _CB2B = _F32(1.403), _F32(-0.714), _F32(-0.344), _F32(1.773)
_HALF = _F32(0.5)


def bgr_to_ycbcr(bgr: np.ndarray) -> np.ndarray:
    """natix `bgr2ycbcr`: cv2 float YCrCb on 0-255 values, reordered to YCbCr, then studio-range scaled."""
    f = bgr.astype(_F32)
    b, g, r = f[..., 0], f[..., 1], f[..., 2]
    y = b * _Y_B + g * _Y_G + r * _Y_R
    cr = (r - y) * _CR + _HALF
    cb = (b - y) * _CB + _HALF
    out = np.empty(f.shape, _F32)
    out[..., 0] = (y * _F32(235 - 16) + _F32(16)) / _F32(255.0)
    out[..., 1] = (cb * _F32(240 - 16) + _F32(16)) / _F32(255.0)
    out[..., 2] = (cr * _F32(240 - 16) + _F32(16)) / _F32(255.0)
    return out


def ycbcr_to_bgr(ycbcr: np.ndarray) -> np.ndarray:
    """natix `ycbcr2bgr` (inverse of `bgr_to_ycbcr`), float32 BGR, unclipped."""
    f = ycbcr.astype(_F32)
    y = (f[..., 0] * _F32(255.0) - _F32(16)) / _F32(235 - 16)
    cb = (f[..., 1] * _F32(255.0) - _F32(16)) / _F32(240 - 16) - _HALF
    cr = (f[..., 2] * _F32(255.0) - _F32(16)) / _F32(240 - 16) - _HALF
    out = np.empty(f.shape, _F32)
    out[..., 0] = y + cb * _CB2B
    out[..., 1] = y + cb * _CB2G + cr * _CR2G
    out[..., 2] = y + cr * _CR2R
    return out


def _float_to_uint8_like_numpy(x: np.ndarray) -> np.ndarray:
    # `.astype(np.uint8)` of values that stay within (-1, 256): truncation toward zero.
    return np.clip(np.trunc(x), 0, 255).astype(np.uint8)


def color_saturation(bgr: np.ndarray, param: float) -> np.ndarray:
    """CS: scale the chroma around its midpoint by `param` (0.4 keeps 40% of the colour)."""
    ycbcr = bgr_to_ycbcr(bgr)
    p = _F32(param)
    ycbcr[..., 1] = _HALF + (ycbcr[..., 1] - _HALF) * p
    ycbcr[..., 2] = _HALF + (ycbcr[..., 2] - _HALF) * p
    return _float_to_uint8_like_numpy(ycbcr_to_bgr(ycbcr))


def color_contrast(bgr: np.ndarray, param: float) -> np.ndarray:
    """CC: multiply every channel by `param` (0.85 darkens by 15%), truncating."""
    return (bgr.astype(_F32) * _F32(param)).astype(np.uint8)


def gaussian_noise_color(bgr: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    """GNC: add N(0, variance) to Y, Cb, Cr on the validator's /255 scale, then back to BGR, clipped."""
    ycbcr = bgr_to_ycbcr(bgr) / _F32(255.0)
    noisy = (ycbcr + math.sqrt(variance) * rng.standard_normal(ycbcr.shape)) * 255.0  # float64, as numpy does
    return np.clip(ycbcr_to_bgr(noisy), 0, 255).astype(np.uint8)


def down_up_jpeg(bgr: np.ndarray, factor: int) -> np.ndarray:
    """"JPEG": cv2.resize to (w // factor, h // factor) and back, INTER_LINEAR both ways."""
    height, width = bgr.shape[:2]
    small = _cv2_resize_linear_u8(bgr, height // factor, width // factor)
    return _cv2_resize_linear_u8(small, height, width)


def gaussian_blur(bgr: np.ndarray, ksize: int) -> np.ndarray:
    """GB: cv2.GaussianBlur(img, (k, k), k / 6), reflect-101 borders, OpenCV's 8-bit fixed point."""
    kernel = _gaussian_kernel_q8(ksize, ksize / 6.0)
    r = ksize // 2
    pad = np.pad(bgr, ((r, r), (r, r), (0, 0)), mode="reflect").astype(np.uint32)  # numpy reflect = BORDER_REFLECT_101
    height, width = bgr.shape[:2]
    horizontal = np.zeros((height + 2 * r, width, 3), np.uint32)
    for k, wk in enumerate(kernel):
        horizontal += pad[:, k : k + width] * np.uint32(wk)  # Q8 result, fits in 16 bits
    horizontal = np.minimum(horizontal, 0xFFFF)
    vertical = np.zeros((height, width, 3), np.uint64)
    for k, wk in enumerate(kernel):
        vertical += horizontal[k : k + height].astype(np.uint64) * np.uint64(wk)  # Q16
    return np.minimum((vertical + (1 << 15)) >> 16, 255).astype(np.uint8)


def _gaussian_kernel_q8(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV's bit-exact Gaussian kernel rounded to 8 fractional bits (ufixedpoint16)."""
    x = np.arange(ksize) - (ksize - 1) / 2.0
    k = np.exp(-(x * x) / (2.0 * sigma * sigma))
    k /= k.sum()
    return np.round(k * 256.0).astype(np.int64)


def block_wise(bgr: np.ndarray, param: int, rng: np.random.Generator) -> np.ndarray:
    """BW (unused by levels 0-3, kept for completeness): grey 8x8 blocks, `min(h, w) // 256 * param` of them."""
    out = bgr.copy()
    count = min(out.shape[0], out.shape[1]) // 256 * param
    for _ in range(count):
        c = int(rng.integers(0, out.shape[1] - 8))  # random.randint(0, w - 1 - 8), inclusive
        r = int(rng.integers(0, out.shape[0] - 8))
        out[r : r + 8, c : c + 8] = 128
    return out


# OpenCV INTER_LINEAR for 8-bit images: 11-bit coefficients, horizontal pass into int,
# vertical pass with the SIMD rounding of VResizeLinearVec_32s8u.
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def _linear_taps(in_size: int, out_size: int, *, vertical: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = in_size / out_size
    fx = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)  # cv::resize computes in float
    sx = np.floor(fx).astype(np.int64)
    fx = fx - sx
    if not vertical:
        # Columns outside the image snap to the edge with weight (1, 0); rows keep their
        # fraction and only clamp the row index, which rounds differently in the SIMD pass.
        low = sx < 0
        fx[low], sx[low] = 0.0, 0
        high = sx >= in_size - 1
        fx[high], sx[high] = 0.0, in_size - 1
    a0 = np.round((1.0 - fx) * _COEF_SCALE).astype(np.int64)  # saturate_cast<short>: rounds
    return np.clip(sx, 0, in_size - 1), np.clip(sx + 1, 0, in_size - 1), np.stack([a0, _COEF_SCALE - a0])


def _cv2_resize_linear_u8(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    in_h, in_w = img.shape[:2]
    if (in_h, in_w) == (out_h, out_w):
        return img.copy()
    if in_h == 2 * out_h and in_w == 2 * out_w:
        # cv::resize turns an exact 2x INTER_LINEAR shrink into INTER_AREA: rounded 2x2 means.
        s = img.astype(np.int32)
        total = s[0::2, 0::2] + s[1::2, 0::2] + s[0::2, 1::2] + s[1::2, 1::2]
        return ((total + 2) >> 2).astype(np.uint8)
    x0, x1, ax = _linear_taps(in_w, out_w, vertical=False)
    y0, y1, ay = _linear_taps(in_h, out_h, vertical=True)
    s = img.astype(np.int64)
    rows = s[:, x0] * ax[0][None, :, None] + s[:, x1] * ax[1][None, :, None]  # value << 11
    r0 = rows[y0] >> 4
    r1 = rows[y1] >> 4
    b0 = ay[0][:, None, None]
    b1 = ay[1][:, None, None]
    out = (((r0 * b0) >> 16) + ((r1 * b1) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)
