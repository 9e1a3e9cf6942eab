"""PP-OCR's pre- and post-processing around its two graphs (the detector and the recognizer
that the `rapidocr` package ships), ported from rapidocr (Apache-2.0) to what the runtime
needs: no PaddleOCR, no rapidocr at run time; numpy and OpenCV (the `ocr` extra).

- Detector input: RGB scaled so its shorter side is `det_side` (multiple of 32), normalised to
  [-1, 1], NCHW float32. Output: a text probability map of the same size.
- DB post-processing: threshold, 2x2 dilation, contours, minimum-area rectangles scored by the
  mean probability inside, grown by `unclip_ratio` (for a rectangle, offsetting by
  area * ratio / perimeter is exact), mapped back to the image.
- Recognizer input: each box cut out with a perspective warp (turned when taller than wide),
  48 px high, padded to the widest in the batch, normalised like the detector's.
- CTC greedy decoding with the character set stored in the recognizer's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streetcascade.errors import BackendUnavailable

try:
    import cv2
except ImportError as exc:  # the `ocr` extra installs opencv-python-headless
    raise BackendUnavailable(f"OpenCV is not installed (pip install 'streetcascade[ocr]'): {exc}") from exc

REC_HEIGHT = 48
REC_MIN_RATIO = 320 / 48  # rapidocr's default width/height of the recognizer input


@dataclass(frozen=True)
class DetSettings:
    det_side: int = 736  # the shorter side the detector sees
    thresh: float = 0.3
    box_thresh: float = 0.5
    unclip_ratio: float = 1.6
    max_candidates: int = 1000
    min_size: int = 3


def detector_input(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    ratio = side / min(h, w)
    rh = max(32, int(round(h * ratio / 32)) * 32)
    rw = max(32, int(round(w * ratio / 32)) * 32)
    x = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_LINEAR).astype(np.float32) * (2.0 / 255.0) - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def text_boxes(prob: np.ndarray, image_hw: tuple[int, int], s: DetSettings = DetSettings()) -> list[np.ndarray]:
    """4x2 float32 corner arrays in image pixels, from the detector's probability map (H x W)."""
    h, w = image_hw
    ph, pw = prob.shape
    bitmap = cv2.dilate((prob > s.thresh).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for contour in contours[: s.max_candidates]:
        (cx, cy), (bw, bh), angle = cv2.minAreaRect(contour)
        if min(bw, bh) < s.min_size:
            continue
        x0, y0, cw, ch = cv2.boundingRect(contour)
        mask = np.zeros((ch, cw), np.uint8)
        cv2.fillPoly(mask, [contour.reshape(-1, 2) - [x0, y0]], 1)
        score = float(prob[y0 : y0 + ch, x0 : x0 + cw][mask.astype(bool)].mean())
        if score < s.box_thresh:
            continue
        grow = bw * bh * s.unclip_ratio / (2 * (bw + bh))
        pts = cv2.boxPoints(((cx, cy), (bw + 2 * grow, bh + 2 * grow), angle))
        if min(bw, bh) + 2 * grow < s.min_size + 2:
            continue
        pts[:, 0] = np.clip(pts[:, 0] * w / pw, 0, w - 1)
        pts[:, 1] = np.clip(pts[:, 1] * h / ph, 0, h - 1)
        boxes.append(pts.astype(np.float32))
    # reading order: top to bottom, then left to right within a line (rapidocr's rule, 10 px)
    boxes.sort(key=lambda b: (round(float(b[:, 1].min()) / 10), float(b[:, 0].min())))
    return boxes


def _ordered(pts: np.ndarray) -> np.ndarray:
    s, d = pts.sum(1), np.diff(pts, axis=1).ravel()
    return np.array([pts[np.argmin(s)], pts[np.argmin(d)], pts[np.argmax(s)], pts[np.argmax(d)]], np.float32)


def cut_out(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    pts = _ordered(box)
    width = max(1, int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3]))))
    height = max(1, int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2]))))
    dst = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    crop = cv2.warpPerspective(rgb, cv2.getPerspectiveTransform(pts, dst), (width, height),
                               borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    if height / width >= 1.5:
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


def recognizer_input(crops: list[np.ndarray], max_width: int) -> np.ndarray:
    ratio = max([c.shape[1] / c.shape[0] for c in crops] + [REC_MIN_RATIO])
    width = min(max_width, int(np.ceil(REC_HEIGHT * ratio)))
    batch = np.zeros((len(crops), 3, REC_HEIGHT, width), np.float32)
    for i, crop in enumerate(crops):
        w = max(1, min(width, int(np.ceil(REC_HEIGHT * crop.shape[1] / crop.shape[0]))))
        resized = cv2.resize(crop, (w, REC_HEIGHT), interpolation=cv2.INTER_LINEAR).astype(np.float32) * (2.0 / 255.0) - 1.0
        batch[i, :, :, :w] = resized.transpose(2, 0, 1)
    return batch


def ctc_decode(probs: np.ndarray, charset: list[str]) -> list[tuple[str, float]]:
    """Greedy CTC over (N, T, C): index 0 is the blank, repeats collapse."""
    idx = probs.argmax(axis=2)
    conf = probs.max(axis=2)
    out = []
    for row, p in zip(idx, conf):
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        text = "".join(charset[j] for j in row[keep] if j < len(charset))
        out.append((text, float(p[keep].mean()) if keep.any() else 0.0))
    return out


def charset_from_metadata(metadata: dict[str, str]) -> list[str]:
    """PP-OCR recognizers store their characters one per line under "character"; CTC adds the
    blank at 0 and a space at the end."""
    chars = metadata.get("character")
    if not chars:
        raise BackendUnavailable("the recognizer graph has no 'character' metadata (not a PP-OCR recognizer?)")
    return ["<blank>", *chars.splitlines(), " "]
