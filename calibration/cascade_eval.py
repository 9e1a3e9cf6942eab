"""`streetcascade eval`: a compiled cascade against labelled data, fed the challenges
validators send (augmentation levels + JPEG), scored as validators score.

Every challenge goes through `Cascade.classify` one at a time (batch 1, as served), with
per-stage and end-to-end latency; the answers go to `evaluate` (validator reward simulated over
shuffled streams), `write_report` (JSON + HTML) and `export_hard_cases`. `streetcascade tune`
(calibration/cascade_tune.py) scores on the same shuffles (`N_SHUFFLES`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec

from streetcascade.calibration.evaluate import EvalReport, evaluate, latency_stats
from streetcascade.calibration.hard_cases import export_hard_cases
from streetcascade.calibration.report import write_report
from streetcascade.calibration.source import ChallengeSet
from streetcascade.errors import BadInput
from streetcascade.runtime.images import decode_image
from streetcascade.progress import QUIET, Progress

log = logging.getLogger(__name__)

N_SHUFFLES = 20  # eval and tune score on the same shuffles (same seed, same count)


# ---------------------------------------------------------------------------------- eval


class StageLatency(msgspec.Struct, frozen=True):
    stage: str
    runs: int  # challenges that reached this stage
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


class EvalRun(msgspec.Struct, frozen=True):
    report: EvalReport
    stage_latency: list[StageLatency]
    hard_cases: int
    split: str


def run_eval(engine_set, challenges: ChallengeSet, out_dir: str | Path, *, deadline_ms: float | None = None, seed: int = 0,
             split: str = "", hard_case_margin: float = 0.15, hard_case_limit: int | None = 500, fiftyone_name: str | None = None,
             progress: Progress = QUIET) -> EvalRun:
    if len(challenges) == 0:
        raise BadInput("no challenges to evaluate (empty split?)")
    cascade = engine_set.cascade
    names = [s.name for s in cascade.stages]
    probs, exit_idx, latencies = [], [], []
    per_stage: dict[str, list[float]] = {"decode": [], **{n: [] for n in names}}
    # Timed as served: from the challenge's JPEG bytes (decode + resize + stages) when the set
    # keeps them, else from the decoded image.
    jpegs = challenges.jpegs if len(challenges.jpegs) == len(challenges.images) else [None] * len(challenges.images)
    draft = getattr(cascade.stages[0], "input_size", None)
    for rgb, jpeg in progress.track(list(zip(challenges.images, jpegs)), f"eval: the cascade on {len(challenges)} challenges, one at a time"):
        t0 = time.perf_counter()
        try:
            if jpeg is not None:
                rgb = decode_image(jpeg, draft_size=draft)
                per_stage["decode"].append((time.perf_counter() - t0) * 1000.0)
            decision = cascade.classify(rgb, deadline_ms=deadline_ms)
        except Exception as exc:  # a failed challenge is a -1 answer, as on the subnet
            log.warning("cascade failed on a challenge: %s", exc)
            probs.append(-1.0)
            exit_idx.append(0)
            latencies.append((time.perf_counter() - t0) * 1000.0)
            continue
        latencies.append((time.perf_counter() - t0) * 1000.0)
        probs.append(decision.probability)
        exit_idx.append(names.index(decision.stage))
        for name, ms in decision.timings_ms.items():
            if name in per_stage:
                per_stage[name].append(ms)
    report = evaluate(challenges.labels, probs, levels=challenges.levels, sources=challenges.sources, exit_stages=exit_idx,
                      stage_names=names, latencies_ms=latencies, seed=seed, n_shuffles=N_SHUFFLES)
    out = Path(out_dir)
    write_report(report, out, title=f"streetcascade evaluation: {engine_set.engine_dir.name} ({split or 'all'} split, {len(challenges)} challenges)")
    stage_latency = []
    for name, values in per_stage.items():
        if values:
            s = latency_stats(values)
            stage_latency.append(StageLatency(name, len(values), s.p50_ms, s.p90_ms, s.p99_ms, s.mean_ms))
    cases = export_hard_cases(challenges.samples, probs, out / "hard_cases", margin=hard_case_margin, levels=challenges.levels,
                              images=challenges.jpegs, limit=hard_case_limit, fiftyone_name=fiftyone_name)
    run = EvalRun(report, stage_latency, len(cases), split)
    (out / "stages.json").write_bytes(msgspec.json.format(msgspec.json.encode(stage_latency), indent=2))
    return run


def format_eval(run: EvalRun, out_dir: str | Path) -> str:
    r = run.report
    auc = "n/a" if r.auc is None else f"{r.auc:.4f}"
    lines = [
        f"challenges  {r.n} ({r.answered} answered), split {run.split or 'all'}",
        f"accuracy    {r.accuracy:.4f}   MCC {r.mcc:.4f}   AUC {auc}   ECE {r.ece:.4f}",
        f"reward      {r.reward.steady_mean_reward:.4f} per challenge (validator formula, steady state over {r.reward.n_shuffles} shuffled streams;"
        f" p05 {r.reward.p05_reward:.4f}, EMA score {r.reward.final_ema_score:.4f})",
        f"best cut    answer 1 when p > {r.reward_curve.best_threshold:.2f}",
    ]
    if r.per_level:
        lines.append("per level   " + "  ".join(f"{k}: acc {b.accuracy:.3f} (n={b.n})" for k, b in r.per_level.items()))
    if r.per_source and set(r.per_source) != {"unknown"}:
        lines.append("per source  " + "  ".join(f"{k}: acc {b.accuracy:.3f} (n={b.n})" for k, b in r.per_source.items()))
    if r.exit_rates:
        lines.append("exits       " + "  ".join(f"{k}: {v:.1%}" for k, v in r.exit_rates.items()))
    for s in run.stage_latency:
        lines.append(f"latency     {s.stage}: p50 {s.p50_ms:.2f} ms, p90 {s.p90_ms:.2f} ms, p99 {s.p99_ms:.2f} ms over {s.runs} runs")
    if r.latency is not None:
        lines.append(f"latency     end to end: p50 {r.latency.p50_ms:.2f} ms, p99 {r.latency.p99_ms:.2f} ms")
    lines.append(f"report      {Path(out_dir) / 'report.html'} (+ report.json, stages.json); {run.hard_cases} hard case(s) in {Path(out_dir) / 'hard_cases'}")
    return "\n".join(lines)
