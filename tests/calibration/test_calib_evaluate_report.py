import csv
import json

import msgspec
import numpy as np
import pytest
from streetcascade.calibration.challenges import iter_challenges
from streetcascade.calibration.datasets import iter_image_folder
from streetcascade.calibration.evaluate import EvalReport, evaluate
from streetcascade.calibration.hard_cases import export_hard_cases
from streetcascade.calibration.report import write_report
from streetcascade.runtime.images import decode_image

from streetcascade.errors import BadInput


def _fake_run(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probs = np.clip(labels * 0.6 + 0.2 + rng.normal(0, 0.2, n), 0, 1)
    probs[:7] = -1.0  # timeouts
    levels = rng.integers(0, 4, n)
    sources = np.where(rng.random(n) < 0.5, "real", "synthetic")
    stages = rng.choice([0, 1], n, p=[0.7, 0.3])
    latency = np.where(stages == 0, 12.0, 70.0) + rng.random(n)
    return labels, probs, levels, sources, stages, latency


def test_evaluate_reports_every_breakdown():
    labels, probs, levels, sources, stages, latency = _fake_run()
    report = evaluate(labels, probs, levels=levels, sources=sources, exit_stages=stages, stage_names=["dino", "vlm"], latencies_ms=latency, n_shuffles=4)
    answered = probs != -1
    assert report.n == 400 and report.answered == 393
    assert report.accuracy == pytest.approx(np.mean(np.round(probs[answered]) == labels[answered]))
    assert set(report.per_level) == {"L0", "L1", "L2", "L3"} and set(report.per_source) == {"real", "synthetic"}
    assert sum(b.n for b in report.per_level.values()) == 400
    assert report.exit_rates.keys() == {"dino", "vlm"} and sum(report.exit_rates.values()) == pytest.approx(1.0)
    assert report.latency.p50_ms < report.latency.p99_ms <= report.latency.max_ms
    assert 0 < report.reward.steady_mean_reward < 1 and report.reward.answer_rate == pytest.approx(393 / 400)
    assert report.confusion.tn + report.confusion.fp + report.confusion.fn + report.confusion.tp == 393
    assert 0.3 <= report.reward_curve.best_threshold <= 0.7
    # JSON round trip (NaN bins become null)
    decoded = json.loads(msgspec.json.encode(report))
    assert decoded["per_level"]["L0"]["n"] == report.per_level["L0"].n


def test_evaluate_minimal_and_bad_input():
    report = evaluate([1, 0, 1], [0.9, 0.1, 0.8], n_shuffles=1)
    assert report.per_level == {} and report.latency is None and report.accuracy == 1.0
    silent = evaluate([1, 0], [-1.0, -1.0], n_shuffles=1)
    assert silent.answered == 0 and silent.reward.mean_reward == 0.0 and silent.auc is None
    for args, kwargs in [
        (([1, 0], [0.5, 1.5]), {}),
        (([1, 0], [0.5]), {}),
        (([], []), {}),
        (([1, 3], [0.5, 0.5]), {}),
        (([1, 0], [0.5, 0.5]), {"levels": [1]}),
        (([1, 0], [0.5, 0.5]), {"exit_stages": [0, 2], "stage_names": ["a"]}),
    ]:
        with pytest.raises(BadInput):
            evaluate(*args, **kwargs)


def test_report_writes_json_and_self_contained_html(tmp_path):
    labels, probs, levels, sources, stages, latency = _fake_run(seed=1)
    report = evaluate(labels, probs, levels=levels, sources=sources, exit_stages=stages, latencies_ms=latency, n_shuffles=2)
    json_path, html_path = write_report(report, tmp_path / "out", title="run <1>")
    loaded = msgspec.json.decode(json_path.read_bytes(), type=EvalReport)
    assert loaded.n == report.n and loaded.confusion == report.confusion
    page = html_path.read_text()
    assert page.count("<svg") == 2 and "Reliability diagram" in page and "Confusion matrix" in page
    assert f"<td>{report.confusion.tp}</td>" in page and "run &lt;1&gt;" in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from the network
    assert "Per augmentation level" in page and "stage1" in page


def test_hard_cases_export(tmp_path, image_folder, scene, encode_image):
    samples = list(iter_image_folder(image_folder))
    probs = np.array([0.5 + (0.45 if s.label else -0.45) for s in samples])
    probs[0] = 1.0 - samples[0].label  # confidently wrong
    probs[1] = 0.55 if samples[1].label else 0.45  # right but close to 0.5
    probs[2] = -1.0  # no answer: skipped
    out = tmp_path / "hard"
    cases = export_hard_cases(samples, probs, out, margin=0.1, levels=[3] * len(samples))
    assert [c.kind for c in cases] == ["misclassified", "low_margin"]
    assert (out / cases[0].file).read_bytes() == samples[0].data and cases[0].file.endswith("_L3" + (out / cases[0].file).suffix)
    rows = list(csv.DictReader((out / "hard_cases.csv").open()))
    assert [r["key"] for r in rows] == [samples[0].key, samples[1].key] and rows[0]["origin"] == samples[0].origin
    limited = export_hard_cases(samples, probs, tmp_path / "one", limit=1, fiftyone_name="x")  # no fiftyone: skipped
    assert len(limited) == 1
    with pytest.raises(BadInput):
        export_hard_cases(samples, probs[:3], out)
    with pytest.raises(BadInput):
        export_hard_cases(samples, probs, out, margin=0.7)


def test_end_to_end_folder_to_report(tmp_path, image_folder, orange_model):
    """Dataset -> validator challenges -> a stand-in model -> evaluation -> report + hard cases."""
    challenges = list(iter_challenges(iter_image_folder(image_folder), seed=0))
    assert len(challenges) == 12
    probs = np.array([orange_model(decode_image(c.jpeg)) for c in challenges])
    labels = [c.sample.label for c in challenges]
    report = evaluate(labels, probs, levels=[c.level for c in challenges], sources=[c.sample.source for c in challenges], n_shuffles=2)
    assert report.auc is not None and report.auc > 0.7  # orange pixels do find cones
    _, html_path = write_report(report, tmp_path / "report")
    assert html_path.exists()
    export_hard_cases([c.sample for c in challenges], probs, tmp_path / "hard", images=[c.jpeg for c in challenges])
    assert (tmp_path / "hard" / "hard_cases.csv").exists()
