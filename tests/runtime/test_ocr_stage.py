"""The OCR stage on REAL weights (PP-OCR models from the rapidocr wheel, compiled into an
engine set like any graph): it reads rendered signs (rotated, blurred, JPEG-compressed) and the
sample photos, and decides the images stage 1 is unsure about. Needs the rapidocr wheel in the
cache (fetched once from PyPI by the ppocr family); skips, saying so, without it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

pytest.importorskip("cv2", exc_type=ImportError)
pytest.importorskip("rapidfuzz", exc_type=ImportError)

from streetcascade.compile.pipeline import compile_cascade  # noqa: E402
from streetcascade.runtime import decode_image, load_engine_set  # noqa: E402
from streetcascade.runtime.evidence import find_phrases  # noqa: E402
from streetcascade.runtime.ocr_stage import OcrStage  # noqa: E402
from support import SAMPLES, compile_or_skip, ocr_cascade_stages, write_config  # noqa: E402

from streetcascade.errors import InferenceError  # noqa: E402


@pytest.fixture(scope="module")
def ocr_set(tiny_ocr_engine_dir):
    """Stage 1 a tiny random DINOv3 that is never sure (its band covers everything), then PP-OCR."""
    with load_engine_set(tiny_ocr_engine_dir) as es:
        yield es


def font(size: int):
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def sign_on_photo(text: str, angle: float = 0.0, blur: float = 0.0, jpeg: int = 0, photo: str = "cobbled-street-b.jpg") -> np.ndarray:
    """A street photo with an orange sign carrying `text` pasted in."""
    base = Image.open(SAMPLES / photo).convert("RGB").resize((640, 480))
    f = font(34)
    w = int(f.getlength(text)) + 40
    sign = Image.new("RGBA", (w, 70), (245, 140, 20, 255))
    ImageDraw.Draw(sign).text((20, 14), text, fill=(10, 10, 10, 255), font=f)
    if angle:
        sign = sign.rotate(angle, expand=True, resample=Image.BICUBIC)
    base.paste(sign, ((640 - sign.width) // 2, 120), sign)
    if blur:
        base = base.filter(ImageFilter.GaussianBlur(blur))
    if jpeg:
        buf = io.BytesIO()
        base.save(buf, "JPEG", quality=jpeg)
        return decode_image(buf.getvalue())
    return np.asarray(base)


def ocr_stage(es) -> OcrStage:
    return es.cascade.stages[1]


@pytest.mark.parametrize("text,kw", [
    ("ROAD WORK AHEAD", {}),
    ("ROAD WORK AHEAD", {"angle": 7}),
    ("ROAD WORK AHEAD", {"blur": 1.2}),
    ("ROAD WORK AHEAD", {"jpeg": 30}),
    ("BAUSTELLE", {}),
    ("BAUSTELLE", {"angle": -6, "jpeg": 40}),
])
def test_reads_signs(ocr_set, text, kw):
    lines = ocr_stage(ocr_set).read(sign_on_photo(text, **kw))
    read = " | ".join(t for t, _ in lines)
    assert any(m.phrase == text for m in find_phrases(ocr_stage(ocr_set).vocabulary, read)), read


def test_reads_the_sample_photos(ocr_set):
    read = " ".join(t for t, _ in ocr_stage(ocr_set).read(decode_image((SAMPLES / "parking-sign.jpg").read_bytes())))
    assert "PARKING" in read.upper() and "PROHIBITED" in read.upper()
    assert ocr_stage(ocr_set).read(np.full((480, 640, 3), 128, np.uint8)) == []  # no text, nothing read


def test_the_sign_decides_when_stage_one_is_unsure(ocr_set):
    cascade = ocr_set.cascade
    work, parking = sign_on_photo("ROAD WORK AHEAD"), sign_on_photo("PARKING")
    for img in (work, parking):
        p1 = cascade.stages[0].score([img])[0]
        assert 0.01 < p1 < 0.99  # stage 1 unsure
    d_work, d_parking = cascade.classify(work), cascade.classify(parking)
    assert d_work.stage == "ocr" and d_work.label == 1 and "ROAD WORK" in d_work.text.upper()
    assert d_parking.stage == "ocr" and d_parking.label == 0 and "PARKING" in d_parking.text.upper()


def test_the_openvino_target_reads_the_same_text(ocr_set, tmp_path, tiny_dinov3_dir):
    """PP-OCR's detector (free height/width axes) and recognizer through the OpenVINO target:
    tensor parity vs the source graphs at compile time, then the same lines as ONNX Runtime."""
    pytest.importorskip("openvino")
    cfg = write_config(tmp_path / "c.toml", ocr_cascade_stages(tiny_dinov3_dir), tmp_path / "engines", target={"backend": "openvino", "device": "cpu"})
    with load_engine_set(compile_cascade(cfg, progress=False)) as es:
        assert es.manifest.target.backend == "openvino"
        assert all(g.parity.max_abs_logit_error < 1e-3 for g in es.manifest.stages[1].graphs)
        for img in (sign_on_photo("ROAD WORK AHEAD"), decode_image((SAMPLES / "parking-sign.jpg").read_bytes())):
            ours = [t for t, _ in ocr_stage(es).read(img)]
            assert ours and ours == [t for t, _ in ocr_stage(ocr_set).read(img)]


def test_a_failing_or_late_ocr_stage_keeps_stage_one(ocr_set, monkeypatch):
    cascade = ocr_set.cascade
    img = sign_on_photo("ROAD WORK AHEAD")
    p1 = float(cascade.stages[0].score([img])[0])
    before = cascade.counters["fallbacks"]

    def broken(self, rgb):
        raise InferenceError("recognizer failed")

    with monkeypatch.context() as m:
        m.setattr(OcrStage, "read", broken)
        d = cascade.classify(img)
    assert d.stage == "stage1" and d.fallback and d.probability == pytest.approx(p1)
    late = cascade.classify(img, deadline_ms=cascade.stages[0].expected_ms + 50)  # no time left for OCR
    assert late.stage == "stage1" and late.fallback
    assert cascade.counters["fallbacks"] == before + 2


def test_tune_fits_the_combination_rule_and_eval_runs_it(tmp_path, tiny_dinov3_dir, capsys):
    """Roadwork scenes carry a ROAD WORK sign, the others a PARKING sign or none: tune fits the
    rule from what the OCR stage reads (a hit pushes up, other text down), writes it into the
    config, and eval/classify use it."""
    import tomllib

    from streetcascade.cli import main
    from streetcascade.config import load_config

    photos = sorted(p.name for p in SAMPLES.glob("*.jpg"))
    for label, texts in (("roadwork", ["ROAD WORK AHEAD", "BAUSTELLE", "ROAD CLOSED", "DETOUR"]),
                         ("no_roadwork", ["PARKING", "ONE WAY", None, None])):
        folder = tmp_path / "data" / label
        folder.mkdir(parents=True)
        for i, text in enumerate(texts * 2):
            img = sign_on_photo(text, photo=photos[i % len(photos)]) if text else np.asarray(Image.open(SAMPLES / photos[i % len(photos)]).convert("RGB"))
            Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
    cfg = write_config(tmp_path / "c.toml", ocr_cascade_stages(tiny_dinov3_dir), tmp_path / "engines")
    compile_or_skip(cfg, "real PP-OCR weights")
    assert main(["tune", "--config", str(cfg), "--data", str(tmp_path / "data"), "--split", "all", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "combine     ocr:" in out
    written = tomllib.loads(cfg.read_text())["stages"][1]["combine"]
    assert written["hit"] > 0 and written["text_without_hit"] < written["hit"]
    assert load_config(cfg).stages[1].combine.hit == pytest.approx(written["hit"])
    assert main(["eval", "--config", str(cfg), "--data", str(tmp_path / "data"), "--split", "all", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert "ocr" in capsys.readouterr().out
