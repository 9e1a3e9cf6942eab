import base64
import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from streetcascade.calibration.datasets import (
    SPLITS,
    content_key,
    iter_decoded,
    iter_image_folder,
    iter_parquet,
    iter_split,
    parse_label,
    split_of,
)

from streetcascade.errors import BadInput, ConfigError


def test_folder_reader_labels_keys_and_bad_files(image_folder):
    bad = []
    samples = list(iter_image_folder(image_folder, bad=bad))
    assert len(samples) == 12
    assert sorted(s.label for s in samples) == [0] * 6 + [1] * 6
    for s in samples:
        assert s.key == hashlib.sha256(s.data).hexdigest()
        assert s.source == ""
        assert Path(s.origin).read_bytes() == s.data
        assert (Path(s.origin).parent.name == "roadwork") == (s.label == 1)
    reasons = {Path(b.origin).name: b.reason for b in bad}
    assert set(reasons) == {"fake.jpg", "notes.txt"}
    assert "not an image" in reasons["fake.jpg"]
    # deterministic order
    assert [s.key for s in iter_image_folder(image_folder)] == [s.key for s in samples]


def test_folder_reader_source_subfolders(tmp_path, scene, encode_image):
    draw_scene, encode = scene, encode_image
    for source in ("real", "synthetic"):
        for label, dirname in ((1, "roadwork"), (0, "no_roadwork")):
            d = tmp_path / source / dirname
            d.mkdir(parents=True)
            (d / "a.png").write_bytes(encode(draw_scene(bool(label), seed=len(source) + label), "PNG"))
    samples = list(iter_image_folder(tmp_path))
    assert sorted((s.source, s.label) for s in samples) == [("real", 0), ("real", 1), ("synthetic", 0), ("synthetic", 1)]


def test_folder_reader_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        list(iter_image_folder(tmp_path / "missing"))
    (tmp_path / "other").mkdir()
    with pytest.raises(ConfigError, match="no roadwork/ or no_roadwork/"):
        list(iter_image_folder(tmp_path))


def test_labels_csv_custom_columns_and_bad_rows(tmp_path, scene, encode_image):
    draw_scene, encode = scene, encode_image
    (tmp_path / "x").mkdir()
    for i in range(3):
        (tmp_path / "x" / f"{i}.jpg").write_bytes(encode(draw_scene(i % 2 == 1, seed=i)))
    (tmp_path / "x" / "broken.jpg").write_bytes(b"\x00\x01")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "path,is_roadwork,kind\n"
        "x/0.jpg,no_roadwork,real\n"
        "x/1.jpg,1,synthetic\n"
        "x/2.jpg,maybe,real\n"
        "x/missing.jpg,1,real\n"
        "x/broken.jpg,0,real\n"
        ",1,real\n"
    )
    bad = []
    samples = list(
        iter_image_folder(tmp_path, csv_path, filename_column="path", label_column="is_roadwork", source_column="kind", bad=bad)
    )
    assert [(Path(s.origin).name, s.label, s.source) for s in samples] == [("0.jpg", 0, "real"), ("1.jpg", 1, "synthetic")]
    assert len(bad) == 4
    joined = " | ".join(b.reason for b in bad)
    assert "maybe" in joined and "does not exist" in joined and "not an image" in joined and "empty" in joined
    with pytest.raises(ConfigError, match="lacks column"):
        list(iter_image_folder(tmp_path, csv_path))  # default column names are absent
    with pytest.raises(ConfigError, match="cannot be opened"):
        list(iter_image_folder(tmp_path, tmp_path / "nope.csv"))


@pytest.mark.parametrize(
    "value, expected",
    [(1, 1), (0, 0), (True, 1), (1.0, 1), ("Roadwork", 1), ("None", 0), (" 0 ", 0), ("1.0", 1), (b"1", 1)],
)
def test_parse_label_spellings(value, expected):
    assert parse_label(value) == expected


@pytest.mark.parametrize("value", [2, -1, 0.5, "maybe", None, float("nan"), [1]])
def test_parse_label_rejects(value):
    with pytest.raises(BadInput):
        parse_label(value)


def _write_parquet(path, images, labels, sources=None, image_type=None):
    columns = {"image": pa.array(images, type=image_type) if image_type else images, "label": labels}
    if sources is not None:
        columns["source"] = sources
    pq.write_table(pa.table(columns), path, row_group_size=2)


def test_parquet_bytes_structs_base64_and_bad_rows(tmp_path, scene, encode_image):
    draw_scene, encode = scene, encode_image
    imgs = [encode(draw_scene(i % 2 == 0, seed=i)) for i in range(5)]
    # raw bytes column
    raw = tmp_path / "raw.parquet"
    _write_parquet(raw, imgs + [b"garbage", None], [1, 0, 1, 0, 1, 1, 0], ["real", "synthetic", "real", "fake", None, "real", "real"])
    bad = []
    samples = list(iter_parquet(raw, source_column="source", batch_rows=3, bad=bad))
    assert [s.data for s in samples] == imgs
    assert [s.label for s in samples] == [1, 0, 1, 0, 1]
    assert [s.source for s in samples] == ["real", "synthetic", "real", "synthetic", ""]
    assert samples[3].origin.endswith("raw.parquet#row=3")
    assert sorted(b.origin.rsplit("=", 1)[1] for b in bad) == ["5", "6"]
    # streaming granularity does not change the result
    assert [s.key for s in iter_parquet(raw, batch_rows=1)] == [s.key for s in samples]
    # HF datasets Image structs, with another column name, plus base64 text
    hf = tmp_path / "hf.parquet"
    struct_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"img": pa.array([{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(imgs)], type=struct_type), "y": [0, 1, 0, 1, 2]}), hf)
    b64 = tmp_path / "b64.parquet"
    pq.write_table(pa.table({"image": [base64.b64encode(b).decode() for b in imgs[:2]] + ["***"], "label": ["roadwork", "none", "1"]}), b64)
    bad = []
    hf_samples = list(iter_parquet(hf, image_column="img", label_column="y", bad=bad))
    assert [s.data for s in hf_samples] == imgs[:4] and [s.label for s in hf_samples] == [0, 1, 0, 1]
    assert len(bad) == 1 and "label 2" in bad[0].reason
    bad = []
    b64_samples = list(iter_parquet(b64, bad=bad))
    assert [s.data for s in b64_samples] == imgs[:2] and [s.label for s in b64_samples] == [1, 0]
    assert len(bad) == 1 and "base64" in bad[0].reason


def test_parquet_config_errors_and_unreadable_file(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"picture": [b"x"], "label": [1]}), path)
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['image'\].*picture"):
        list(iter_parquet(path))
    not_parquet = tmp_path / "b.parquet"
    not_parquet.write_bytes(b"nope")
    bad = []
    assert list(iter_parquet([not_parquet], bad=bad)) == []
    assert "not a readable parquet" in bad[0].reason


def test_split_is_deterministic_and_matches_fractions():
    keys = [content_key(str(i).encode()) for i in range(4000)]
    splits = [split_of(k, seed=7, fractions=(0.5, 0.25, 0.25)) for k in keys]
    assert splits == [split_of(k, seed=7, fractions=(0.5, 0.25, 0.25)) for k in keys]
    for name, expected in zip(SPLITS, (0.5, 0.25, 0.25)):
        assert abs(splits.count(name) / len(keys) - expected) < 0.03
    other_seed = [split_of(k, seed=8, fractions=(0.5, 0.25, 0.25)) for k in keys]
    assert sum(a != b for a, b in zip(splits, other_seed)) > 1000
    assert {split_of(k, 0, (0, 0, 1)) for k in keys[:50]} == {"test"}


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.5, 0.5, 0.5), (-0.1, 0.6, 0.5), (float("nan"), 0.5, 0.5)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ConfigError):
        split_of("ab", 0, fractions)


def test_iter_split_partitions_and_dedupes(image_folder, tmp_path):
    # The same picture under a second name must land once, in one split.
    shutil.copy(image_folder / "roadwork" / "img0.jpeg", image_folder / "roadwork" / "copy_of_img0.jpeg")
    all_samples = list(iter_image_folder(image_folder))
    assert len(all_samples) == 13
    parts = {name: [s.key for s in iter_split(iter_image_folder(image_folder), name, seed=3, fractions=(0.4, 0.3, 0.3))] for name in SPLITS}
    union = [k for keys in parts.values() for k in keys]
    assert len(union) == len(set(union)) == 12
    with pytest.raises(ConfigError):
        list(iter_split(all_samples, "train"))


def test_iter_decoded_reports_truncated_pixels(image_folder):
    samples = list(iter_image_folder(image_folder))
    jpeg = next(s for s in samples if s.origin.endswith(".jpeg"))
    truncated = type(jpeg)(key="t", data=jpeg.data[: len(jpeg.data) // 2], label=1, origin="truncated.jpg")
    bad = []
    decoded = list(iter_decoded([jpeg, truncated], bad=bad))
    assert len(decoded) == 1 and decoded[0][1].shape == (64, 96, 3)
    assert bad[0].origin == "truncated.jpg" and "truncated" in bad[0].reason


def test_bundled_photos_through_a_labels_csv(sample_photos, tmp_path):
    csv_path = tmp_path / "labels.csv"
    rows = ["filename,label"] + [f"{p.name},{int('barrier' in p.name)}" for p in sample_photos]
    csv_path.write_text("\n".join(rows) + "\n")
    bad = []
    samples = list(iter_image_folder(sample_photos[0].parent, csv_path, bad=bad))
    assert len(samples) == len(sample_photos) and not bad
    decoded = list(iter_decoded(samples))
    assert all(rgb.ndim == 3 and rgb.shape[2] == 3 for _, rgb in decoded)
