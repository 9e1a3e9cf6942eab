"""The validators' augmentation levels: shapes, documented parameters, statistics, and parity
with the OpenCV / torch operations the subnet calls (those tests skip when the library is absent)."""

import io
import math

import numpy as np
import pytest
from PIL import Image
from streetcascade.calibration import augment as A
from streetcascade.calibration.challenges import iter_challenges
from streetcascade.calibration.datasets import Sample, content_key

from streetcascade.errors import BadInput


def _noise_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 8, 1), max(w // 8, 1), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


@pytest.mark.parametrize("shape", [(64, 96), (300, 200), (224, 224), (7, 5), (1, 1)])
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_every_level_gives_224_rgb(shape, level):
    out = A.augment(_noise_image(*shape), level, np.random.default_rng(level))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_same_seed_same_output_and_seeds_differ():
    img = _noise_image(120, 160)
    for level in range(4):
        a = A.augment(img, level, np.random.default_rng(42))
        b = A.augment(img, level, np.random.default_rng(42))
        assert np.array_equal(a, b)
    outs = [A.augment(img, 3, np.random.default_rng(s)) for s in range(5)]
    assert len({o.tobytes() for o in outs}) == 5


def test_level0_is_center_square_crop_then_bilinear_resize():
    img = np.zeros((200, 300, 3), np.uint8)
    img[:, :50] = (255, 0, 0)  # left and right bands lie outside the central 200x200 square
    img[:, 250:] = (0, 0, 255)
    img[:, 50:250] = (10, 200, 30)
    out = A.augment(img, 0, np.random.default_rng(0))
    assert (out == (10, 200, 30)).all()
    img = _noise_image(301, 200)
    top = int(round((301 - 200) / 2.0))  # torchvision: round(50.5) == 50 (banker's rounding)
    expected = np.asarray(Image.fromarray(img[top : top + 200]).resize((224, 224), Image.BILINEAR))
    assert np.array_equal(A.augment(img, 0, np.random.default_rng(0)), expected)


def test_level_mix_is_a_quarter_each():
    rng = np.random.default_rng(0)
    counts = np.bincount([A.draw_level(rng) for _ in range(8000)], minlength=4) / 8000
    assert np.allclose(counts, 0.25, atol=0.02)


def test_rotation_angle_is_uniform_within_20_degrees():
    rng = np.random.default_rng(0)
    angles = np.array([A.draw_params(16, 16, 1, rng)["angle"] for _ in range(3000)])
    assert angles.min() >= -20 and angles.max() <= 20
    assert abs(angles.mean()) < 0.6
    assert abs(angles.std() - 40 / math.sqrt(12)) < 0.5  # uniform on [-20, 20]
    assert (np.abs(angles) > 15).mean() == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("size", [(40, 40), (41, 41), (30, 50)])
def test_rotate_is_counter_clockwise_nearest_with_black_fill(size):
    img = _noise_image(*size)
    assert np.array_equal(A.rotate_nearest(img, 0.0), img)
    if size[0] == size[1]:
        assert np.array_equal(A.rotate_nearest(img, 90.0), np.rot90(img, 1))
    tilted = A.rotate_nearest(np.full((100, 100, 3), 200, np.uint8), 20.0)
    assert (tilted[0, 0] == 0).all() and (tilted[50, 50] == 200).all()
    assert set(np.unique(tilted)) == {0, 200}  # nearest: no blended values


def test_crop_area_is_uniform_between_20_and_100_percent_and_square():
    h = w = 100
    rng = np.random.default_rng(0)
    crops = [A.random_resized_crop_params(h, w, rng) for _ in range(4000)]
    sides = np.array([c[2] for c in crops])
    assert all(c[2] == c[3] for c in crops)
    assert all(0 <= c[0] and 0 <= c[1] and c[0] + c[2] <= h and c[1] + c[3] <= w for c in crops)
    area = sides**2 / (h * w)
    assert area.min() >= 0.19 and area.max() <= 1.0
    assert area.mean() == pytest.approx(0.6, abs=0.02)
    assert (area < 0.4).mean() == pytest.approx(0.25, abs=0.03)


def test_crop_on_wide_images_retries_then_falls_back_to_the_central_square():
    rng = np.random.default_rng(1)
    crops = [A.random_resized_crop_params(90, 160, rng) for _ in range(3000)]
    sides = np.array([c[2] for c in crops])
    assert sides.max() <= 90
    # A square of area s*90*160 fits only for s <= 90/160; larger draws are redrawn (10 tries).
    assert ((sides**2) / (90 * 160)).max() <= 90 / 160 + 0.01
    # 1x10000 strip: no square of 20% area fits, so the fallback takes the central 1x1 square.
    assert A.random_resized_crop_params(1, 10000, rng) == (0, 4999, 1, 1)


def test_flips_never_happen_like_the_validator_code_but_can_be_enabled():
    rng = np.random.default_rng(0)
    flips = [A.draw_params(20, 20, level, rng) for level in (1, 2, 3) for _ in range(300)]
    assert not any(p["hflip"] or p["vflip"] for p in flips)
    flips = [A.draw_params(20, 20, 1, rng, flip_p=A.DOCUMENTED_FLIP_P) for _ in range(2000)]
    assert np.mean([p["hflip"] for p in flips]) == pytest.approx(0.5, abs=0.04)
    assert np.mean([p["vflip"] for p in flips]) == pytest.approx(0.5, abs=0.04)
    plain = A.augment(_noise_image(80, 80), 1, np.random.default_rng(9), flip_p=0.0)
    both = A.augment(_noise_image(80, 80), 1, np.random.default_rng(9), flip_p=1.0)
    assert np.array_equal(both, plain[::-1, ::-1])


def test_distortion_levels_drawn_per_augmentation_level():
    rng = np.random.default_rng(0)
    l2 = [A.draw_params(16, 16, 2, rng) for _ in range(1500)]
    l3 = [A.draw_params(16, 16, 3, rng) for _ in range(1500)]
    assert all(set(p) >= {"CS", "CC", "JPEG"} and "GNC" not in p and "GB" not in p for p in l2)
    for name in ("CS", "CC", "JPEG"):
        assert np.bincount([p[name] for p in l2], minlength=2) / 1500 == pytest.approx([0.5, 0.5], abs=0.05)
    for name in ("CS", "CC", "JPEG", "GNC", "GB"):
        assert np.bincount([p[name] for p in l3], minlength=3) / 1500 == pytest.approx([1 / 3] * 3, abs=0.05)
    assert "CS" not in A.draw_params(16, 16, 1, rng)
    # the pixels follow the drawn parameters: level 3 with nothing drawn equals level 1
    img = _noise_image(64, 64)
    p1 = A.draw_params(64, 64, 1, np.random.default_rng(4))
    p3 = dict(p1, level=3, CS=0, CC=0, JPEG=0, GNC=0, GB=0)
    assert np.array_equal(A.apply_params(img, p1, rng), A.apply_params(img, p3, rng))
    p3["CC"] = 1
    assert np.array_equal(A.apply_params(img, p3, rng), A.color_contrast(A.apply_params(img, p1, rng), 0.85))


def test_documented_distortion_parameters():
    assert A.DISTORTION_PARAMS["CS"][:2] == (0.4, 0.3)
    assert A.DISTORTION_PARAMS["CC"][:2] == (0.85, 0.725)
    assert A.DISTORTION_PARAMS["JPEG"][:2] == (2, 3)
    assert A.DISTORTION_PARAMS["GNC"][:2] == (0.001, 0.002)
    assert A.DISTORTION_PARAMS["GB"][:2] == (7, 9)
    assert [n for n, _ in A.LEVEL_DISTORTIONS[3]] == ["CS", "CC", "JPEG", "GNC", "GB"]


def test_contrast_multiplies_and_truncates():
    img = np.full((8, 8, 3), 200, np.uint8)
    assert (A.apply_distortion(img, "CC", 1, None) == 170).all()
    assert (A.apply_distortion(img, "CC", 2, None) == 145).all()
    assert (A.color_contrast(np.full((2, 2, 3), 101, np.uint8), 0.85) == 85).all()  # 85.85 -> 85


def test_saturation_keeps_40_and_30_percent_of_chroma():
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[...] = (40, 120, 220)  # an orange-ish BGR colour
    y = 0.114 * 40 + 0.587 * 120 + 0.299 * 220
    for level, keep in ((1, 0.4), (2, 0.3)):
        out = A.apply_distortion(bgr, "CS", level, None).astype(float)
        expected = y + keep * (np.array([40, 120, 220]) - y)
        assert np.abs(out[0, 0] - expected).max() <= 1.5
    grey = np.full((4, 4, 3), 128, np.uint8)
    assert np.abs(A.color_saturation(grey, 0.4).astype(int) - 128).max() <= 1


def test_down_up_jpeg_removes_detail_at_factor_2_and_3():
    checker = (np.indices((224, 224)).sum(0) % 2 * 255).astype(np.uint8)
    bgr = np.repeat(checker[..., None], 3, axis=2)
    out2 = A.apply_distortion(bgr, "JPEG", 1, None)
    assert out2.shape == bgr.shape and np.abs(out2.astype(int) - 128).max() <= 1  # 2x2 means of 0/255
    smooth = np.repeat(np.linspace(0, 255, 224).astype(np.uint8)[None, :, None], 224, 0).repeat(3, 2)
    out3 = A.apply_distortion(smooth, "JPEG", 2, None)
    assert np.abs(out3.astype(int) - smooth).max() <= 4  # a ramp survives a linear down-up


@pytest.mark.parametrize("level, variance", [(1, 0.001), (2, 0.002)])
def test_colour_noise_variance_in_ycbcr(level, variance):
    bgr = np.full((224, 224, 3), 128, np.uint8)
    out = A.apply_distortion(bgr, "GNC", level, np.random.default_rng(0))
    y = A.bgr_to_ycbcr(out)[..., 0] / 255.0
    # Y is on a 219/255 studio scale: the added N(0, var) returns through (219/255)*(255/219).
    # Scaling to studio range and back cancels: the measured Y noise is the added N(0, variance).
    assert y.std() == pytest.approx(math.sqrt(variance), rel=0.1)


@pytest.mark.parametrize("level, k", [(1, 7), (2, 9)])
def test_blur_kernel_size_and_sigma(level, k):
    img = np.zeros((31, 31, 3), np.uint8)
    img[15, 15] = 255
    out = A.apply_distortion(img, "GB", level, None).astype(float)
    r = k // 2
    assert out[15 - r : 16 + r, 15 - r : 16 + r].sum() == out.sum()  # support is k x k
    profile = out[15, :, 0]
    x = np.arange(31) - 15
    kernel = np.exp(-(x**2) / (2 * (k / 6) ** 2)) * (np.abs(x) <= r)
    kernel /= kernel.sum()
    assert np.abs(profile - 255 * kernel * kernel[15]).max() <= 2  # separable: row 15 = k[x] * k[0]


def test_bad_inputs_are_rejected():
    rng = np.random.default_rng(0)
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32), "x", np.zeros((0, 5, 3), np.uint8)):
        with pytest.raises(BadInput):
            A.augment(bad, 1, rng)
    with pytest.raises(BadInput, match="level"):
        A.augment(np.zeros((10, 10, 3), np.uint8), 4, rng)
    with pytest.raises(BadInput):
        A.apply_distortion(np.zeros((4, 4, 3), np.uint8), "XX", 1, rng)


def test_encode_like_validator_is_pillow_default_jpeg():
    pixels = A.augment(_noise_image(100, 100), 2, np.random.default_rng(0))
    data = A.encode_like_validator(pixels)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=75)
    assert data == buffer.getvalue()
    assert Image.open(io.BytesIO(data)).size == (224, 224)


def test_challenges_are_deterministic_per_image_whatever_the_order(scene, encode_image):
    samples = []
    for i in range(6):
        data = encode_image(scene(i % 2 == 0, seed=i))
        samples.append(Sample(key=content_key(data), data=data, label=int(i % 2 == 0), origin=str(i)))
    broken = Sample(key="b", data=b"\xff\xd8\xff" + b"\x00" * 10, label=0, origin="broken")
    bad = []
    forward = {c.sample.key: (c.level, c.jpeg) for c in iter_challenges(samples + [broken], seed=5, bad=bad)}
    backward = {c.sample.key: (c.level, c.jpeg) for c in iter_challenges(samples[::-1], seed=5)}
    assert forward == backward and len(forward) == 6 and bad[0].origin == "broken"
    forced = list(iter_challenges(samples, seed=5, level=0))
    assert all(c.level == 0 and Image.open(io.BytesIO(c.jpeg)).size == (224, 224) for c in forced)


def test_bundled_photos_augment_at_every_level(sample_photos):
    from streetcascade.runtime.images import decode_image

    rng = np.random.default_rng(0)
    for path in sample_photos[:3]:
        rgb = decode_image(path.read_bytes())
        for level in range(4):
            assert A.augment(rgb, level, rng).shape == (224, 224, 3)


# ------------------------------------------------------------------ parity with the real libraries


def _natix_reference():
    """The subnet's DeeperForensics functions, copied from natix/utils/image_transforms.py (v2.0.4)."""
    cv2 = pytest.importorskip("cv2")

    def bgr2ycbcr(img_bgr):
        img_bgr = img_bgr.astype(np.float32)
        img_ycrcb = cv2.cvtColor(img_bgr, cv2.COLOR_BGR2YCR_CB)
        img_ycbcr = img_ycrcb[:, :, (0, 2, 1)].astype(np.float32)
        img_ycbcr[:, :, 0] = (img_ycbcr[:, :, 0] * (235 - 16) + 16) / 255.0
        img_ycbcr[:, :, 1:] = (img_ycbcr[:, :, 1:] * (240 - 16) + 16) / 255.0
        return img_ycbcr

    def ycbcr2bgr(img_ycbcr):
        img_ycbcr = img_ycbcr.astype(np.float32)
        img_ycbcr[:, :, 0] = (img_ycbcr[:, :, 0] * 255.0 - 16) / (235 - 16)
        img_ycbcr[:, :, 1:] = (img_ycbcr[:, :, 1:] * 255.0 - 16) / (240 - 16)
        img_ycrcb = img_ycbcr[:, :, (0, 2, 1)].astype(np.float32)
        return cv2.cvtColor(img_ycrcb, cv2.COLOR_YCR_CB2BGR)

    def color_saturation(img, param):
        ycbcr = bgr2ycbcr(img)
        ycbcr[:, :, 1] = 0.5 + (ycbcr[:, :, 1] - 0.5) * param
        ycbcr[:, :, 2] = 0.5 + (ycbcr[:, :, 2] - 0.5) * param
        return ycbcr2bgr(ycbcr).astype(np.uint8)

    def color_contrast(img, param):
        return (img.astype(np.float32) * param).astype(np.uint8)

    def gaussian_noise_color(img, param, noise):
        ycbcr = bgr2ycbcr(img) / 255
        b = (ycbcr + math.sqrt(param) * noise) * 255
        return np.clip(ycbcr2bgr(b), 0, 255).astype(np.uint8)

    def gaussian_blur(img, param):
        return cv2.GaussianBlur(img, (param, param), param * 1.0 / 6)

    def jpeg_compression(img, param):
        h, w, _ = img.shape
        img = cv2.resize(img, (w // param, h // param))
        return cv2.resize(img, (w, h))

    return dict(CS=color_saturation, CC=color_contrast, GNC=gaussian_noise_color, GB=gaussian_blur, JPEG=jpeg_compression)


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("name", ["CS", "CC", "JPEG", "GB", "GNC"])
def test_distortions_match_the_subnet_opencv_code(name, level):
    ref = _natix_reference()
    param = A.DISTORTION_PARAMS[name][level - 1]
    for shape in ((224, 224), (97, 131)):
        bgr = _noise_image(*shape, seed=level)
        if name == "GNC":
            expected = ref[name](bgr, param, np.random.default_rng(3).standard_normal(bgr.shape))
            got = A.apply_distortion(bgr, name, level, np.random.default_rng(3))
        else:
            expected = ref[name](bgr, param)
            got = A.apply_distortion(bgr, name, level, None)
        diff = np.abs(expected.astype(int) - got.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-4, (name, level, shape, diff.max(), (diff > 0).mean())


def _torchvision_functional():
    try:
        from torchvision.transforms import functional as F
    except Exception as exc:  # PyPI's x86_64 wheels are CUDA builds: beside a CPU torch the import raises RuntimeError
        pytest.skip(f"rotation NOT compared with torchvision in this run: it cannot be imported here ({type(exc).__name__}: {str(exc)[:120]})")
    return F


def test_rotation_matches_torchvision_itself():
    """The validator calls torchvision's F.rotate on a float tensor with its defaults (nearest,
    same size, black fill). Runs where torchvision imports (a CPU torchvision wheel, a GPU box)."""
    torch = pytest.importorskip("torch")
    F = _torchvision_functional()
    rng = np.random.default_rng(0)
    for h, w in ((64, 64), (75, 120), (121, 80)):
        img = _noise_image(h, w, seed=h)
        for angle in rng.uniform(-20, 20, 4):
            x = torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255
            expected = (F.rotate(x, float(angle)) * 255).round().byte().permute(1, 2, 0).numpy()
            assert (expected != A.rotate_nearest(img, float(angle))).any(axis=2).mean() < 1e-3


def test_rotation_geometry_without_torchvision():
    """Independent of torchvision's code: quarter and half turns of the pixel grid are exact
    permutations (positive = counter-clockwise, like np.rot90), 0 is the identity, and any other
    angle only copies input pixels or fills black outside the turned frame."""
    for h, w in ((64, 64), (63, 63)):
        img = _noise_image(h, w, seed=7)
        assert np.array_equal(A.rotate_nearest(img, 0.0), img)
        assert np.array_equal(A.rotate_nearest(img, 90.0), np.rot90(img, 1))
        assert np.array_equal(A.rotate_nearest(img, -90.0), np.rot90(img, -1))
        assert np.array_equal(A.rotate_nearest(img, 180.0), img[::-1, ::-1])
    img = _noise_image(40, 70, seed=3)
    assert np.array_equal(A.rotate_nearest(img, 180.0), img[::-1, ::-1])
    lit = np.maximum(img, 1)  # no input pixel is black
    turned = A.rotate_nearest(lit, 17.0)
    colours = {tuple(p) for p in lit.reshape(-1, 3)}
    assert all(tuple(p) in colours or not p.any() for p in turned.reshape(-1, 3))
    assert not turned[0, 0].any() and not turned[-1, -1].any()  # corners fall outside the turned frame


def test_resized_crop_matches_torch_antialiased_bilinear():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for h, w, top, left, side in ((300, 400, 10, 30, 250), (224, 224, 0, 0, 224), (150, 150, 3, 7, 100), (90, 160, 0, 35, 90)):
        x = rng.random((h, w, 3), dtype=np.float32)
        t = torch.from_numpy(x).permute(2, 0, 1)[None, :, top : top + side, left : left + side]
        expected = torch.nn.functional.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        got = A.resized_crop(x, top, left, side, side, 224)
        assert np.abs(expected[0].permute(1, 2, 0).numpy() - got).max() < 1e-4
