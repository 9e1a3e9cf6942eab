"""Write an `EvalReport` as JSON plus one self-contained HTML page.

The page shows the reliability diagram, the reward-vs-threshold curve and the confusion matrix.
Charts are inline SVG drawn here, so the page needs no network and no extra dependency.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

import msgspec

from streetcascade.calibration.evaluate import EvalReport

_W, _H, _PAD = 360, 280, 44  # chart size and margin, px


def write_report(report: EvalReport, out_dir: str | os.PathLike, *, title: str = "streetcascade evaluation") -> tuple[Path, Path]:
    """Write `report.json` and `report.html` into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2))
    html_path.write_text(render_html(report, title=title), encoding="utf-8")
    return json_path, html_path


def render_html(report: EvalReport, *, title: str) -> str:
    rel = report.reliability
    points = [(m, f) for m, f, c in zip(rel.mean_prob, rel.frac_positive, rel.count) if c > 0 and m is not None and not math.isnan(m)]
    curve = list(zip(report.reward_curve.thresholds, report.reward_curve.rewards))
    charts = [_svg_reliability(points), _svg_curve(curve, report.reward_curve.best_threshold)]
    charts.append(_confusion_table(report.confusion.as_matrix()))
    summary = {
        "challenges": report.n,
        "answered": report.answered,
        "accuracy": report.accuracy,
        "MCC": report.mcc,
        "AUC": report.auc,
        "ECE": report.ece,
        "expected reward (steady)": report.reward.steady_mean_reward,
        "reward p05": report.reward.p05_reward,
        "validator EMA score": report.reward.final_ema_score,
        "best decision threshold": report.reward_curve.best_threshold,
    }
    if report.latency is not None:
        summary.update({"latency p50 ms": report.latency.p50_ms, "latency p99 ms": report.latency.p99_ms})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}.charts{display:flex;flex-wrap:wrap;gap:24px}"
        "figure{margin:0}figcaption{font-weight:bold;margin-bottom:4px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _kv_table(summary),
        "<div class='charts'>",
        *charts,
        "</div>",
    ]
    if report.per_level:
        parts += ["<h2>Per augmentation level</h2>", _breakdown_table(report.per_level)]
    if report.per_source:
        parts += ["<h2>Per source</h2>", _breakdown_table(report.per_source)]
    if report.exit_rates:
        parts += ["<h2>Exit rate per stage</h2>", _kv_table(report.exit_rates)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _fmt(v: object) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return html.escape(str(v))


def _kv_table(items: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in items.items())
    return f"<table>{rows}</table>"


def _breakdown_table(groups: dict) -> str:
    head = "<tr><th>group</th><th>n</th><th>answered</th><th>accuracy</th><th>MCC</th><th>AUC</th></tr>"
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{b.n}</td><td>{b.answered}</td><td>{_fmt(b.accuracy)}</td>"
        f"<td>{_fmt(b.mcc)}</td><td>{_fmt(b.auc)}</td></tr>"
        for name, b in groups.items()
    )
    return f"<table>{head}{rows}</table>"


def _confusion_table(matrix: list[list[int]]) -> str:
    (tn, fp), (fn, tp) = matrix
    return (
        "<figure><figcaption>Confusion matrix</figcaption><table>"
        "<tr><th></th><th>answer 0</th><th>answer 1</th></tr>"
        f"<tr><th>label 0</th><td>{tn}</td><td>{fp}</td></tr>"
        f"<tr><th>label 1</th><td>{fn}</td><td>{tp}</td></tr></table></figure>"
    )


# ---------------------------------------------------------------------------------- SVG


def _xy(x: float, y: float) -> tuple[float, float]:
    """Map [0, 1] x [0, 1] to chart pixels (y up)."""
    return _PAD + x * (_W - 2 * _PAD), _H - _PAD - y * (_H - 2 * _PAD)


def _svg_frame(caption: str, xlabel: str, ylabel: str, body: list[str]) -> str:
    x0, y0 = _xy(0, 0)
    x1, y1 = _xy(1, 1)
    ticks = []
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        tx, _ = _xy(t, 0)
        _, ty = _xy(0, t)
        ticks.append(f"<text x='{tx:.1f}' y='{y0 + 14:.1f}' font-size='10' text-anchor='middle'>{t:g}</text>")
        ticks.append(f"<text x='{x0 - 4:.1f}' y='{ty + 3:.1f}' font-size='10' text-anchor='end'>{t:g}</text>")
    svg = (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{_W}' height='{_H}' role='img' aria-label='{html.escape(caption)}'>"
        f"<rect x='{x0}' y='{y1}' width='{x1 - x0}' height='{y0 - y1}' fill='none' stroke='#999'/>"
        + "".join(ticks)
        + "".join(body)
        + f"<text x='{(x0 + x1) / 2}' y='{_H - 8}' font-size='11' text-anchor='middle'>{html.escape(xlabel)}</text>"
        + f"<text x='12' y='{(y0 + y1) / 2}' font-size='11' text-anchor='middle' transform='rotate(-90 12 {(y0 + y1) / 2})'>{html.escape(ylabel)}</text>"
        + "</svg>"
    )
    return f"<figure><figcaption>{html.escape(caption)}</figcaption>{svg}</figure>"


def _polyline(points: list[tuple[float, float]], colour: str, dash: str = "") -> str:
    coords = " ".join("{:.1f},{:.1f}".format(*_xy(x, y)) for x, y in points)
    extra = f" stroke-dasharray='{dash}'" if dash else ""
    return f"<polyline points='{coords}' fill='none' stroke='{colour}' stroke-width='2'{extra}/>"


def _svg_reliability(points: list[tuple[float, float]]) -> str:
    body = [_polyline([(0, 0), (1, 1)], "#aaa", "4 3")]
    if points:
        body.append(_polyline(points, "#1f77b4"))
        body += ["<circle cx='{:.1f}' cy='{:.1f}' r='3' fill='#1f77b4'/>".format(*_xy(x, y)) for x, y in points]
    return _svg_frame("Reliability diagram", "mean predicted probability", "observed fraction roadwork", body)


def _svg_curve(curve: list[tuple[float, float]], best: float) -> str:
    body = []
    if curve:
        body.append(_polyline(curve, "#d62728"))
        bx, _ = _xy(best, 0)
        _, top = _xy(0, 1)
        _, bottom = _xy(0, 0)
        body.append(f"<line x1='{bx:.1f}' y1='{top:.1f}' x2='{bx:.1f}' y2='{bottom:.1f}' stroke='#2ca02c' stroke-dasharray='3 3'/>")
    return _svg_frame("Expected reward vs decision threshold", "threshold t (answer 1 if p > t)", "steady-state reward", body)


