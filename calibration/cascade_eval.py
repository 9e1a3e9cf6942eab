"""`streetcascade eval` and `streetcascade tune`: a compiled cascade against labelled data, fed
the challenges validators send (augmentation levels + JPEG), scored as validators score.

eval: every challenge goes through `Cascade.classify` one at a time (batch 1, as served), with
per-stage and end-to-end latency; the answers go to `evaluate` (validator reward simulated over
shuffled streams), `write_report` (JSON + HTML) and `export_hard_cases`.

tune: every stage scores every challenge once (logits), a temperature is fitted per stage,
and `tune_exit_thresholds` picks exit bands maximising the simulated reward within a mean
latency budget; the current setting is scored on the same shuffles and kept unless beaten, so
re-running eval on the same data never gives a lower reward. The result is written into the
config's [[stages]] tables (other content kept), which `classify/eval/serve --config` apply.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from streetcascade.calibration.evaluate import EvalReport, evaluate, latency_stats
from streetcascade.calibration.hard_cases import export_hard_cases
from streetcascade.calibration.report import write_report
from streetcascade.calibration.source import ChallengeSet
from streetcascade.calibration.tune import StageScores, fit_temperature, mean_latency_ms, run_cascade, tune_exit_thresholds
from streetcascade.calibration.reward import simulate_reward
from streetcascade.errors import BadInput, ConfigError
from streetcascade.runtime.cascade import sigmoid
from streetcascade.runtime.images import resize_to

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
             split: str = "", hard_case_margin: float = 0.15, hard_case_limit: int | None = 500, fiftyone_name: str | None = None) -> EvalRun:
    if len(challenges) == 0:
        raise BadInput("no challenges to evaluate (empty split?)")
    cascade = engine_set.cascade
    names = [s.name for s in cascade.stages]
    probs, exit_idx, latencies = [], [], []
    per_stage: dict[str, list[float]] = {n: [] for n in names}
    for rgb in challenges.images:
        t0 = time.perf_counter()
        try:
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


# ---------------------------------------------------------------------------------- tune


@dataclass
class TuneResult:
    overrides: dict[str, tuple[float, float, float]]  # stage -> (exit_low, exit_high, temperature)
    reward_before: float
    reward_after: float
    latency_before_ms: float
    latency_after_ms: float
    exit_rates: list[float]
    within_budget: bool
    kept_current: bool


def stage_logits(stage, images: list[np.ndarray], batch: int = 8) -> tuple[np.ndarray, float]:
    """Raw logits of one ClassifierStage on every image, and its batch-1 latency (ms, median)."""
    slot = stage.engine.slot()
    try:
        name_in, name_out = stage.engine.inputs[0].name, stage.engine.outputs[0].name
        batch = max(1, min(batch, getattr(stage, "max_batch", batch)))
        resized = np.stack([resize_to(img, stage.input_size) for img in images])
        logits = np.concatenate([slot.infer({name_in: resized[i : i + batch]})[name_out] for i in range(0, len(resized), batch)])
        times = []
        for i in range(min(len(resized), 16)):
            t0 = time.perf_counter()
            slot.infer({name_in: resized[i : i + 1]})
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        slot.close()
    return logits.astype(np.float64).reshape(-1), float(np.median(times))


def _bands_to_thresholds(band: tuple[float, float]) -> tuple[float, float]:
    lo, hi = band
    if lo > hi:  # "never escalate": an empty band; the runtime needs low <= high
        return 0.5, 0.5
    return float(lo), float(hi)


def run_tune(engine_set, challenges: ChallengeSet, *, latency_budget_ms: float = math.inf, seed: int = 0, fit_temperatures: bool = True) -> TuneResult:
    if len(challenges) == 0:
        raise BadInput("no challenges to tune on (empty split?)")
    labels = challenges.labels
    if np.unique(labels).size < 2:
        raise BadInput("tuning needs both classes (roadwork and no_roadwork) in the data")
    stages = engine_set.cascade.stages
    logits, lat, temps = [], [], []
    for stage in stages:
        z, ms = stage_logits(stage, challenges.images)
        logits.append(z)
        lat.append(ms)
        temps.append(fit_temperature(z, labels) if fit_temperatures else stage.temperature)
        log.info("stage %s: %.2f ms per image, temperature %.3f", stage.name, ms, temps[-1])

    def replay(temperatures, bands):
        probs = [sigmoid(z / t) for z, t in zip(logits, temperatures)]
        answers, exit_stage = run_cascade(probs, bands)
        return simulate_reward(answers, labels, seed=seed, n_shuffles=N_SHUFFLES), mean_latency_ms(exit_stage, lat), exit_stage

    current_t = [s.temperature for s in stages]
    current_bands = [(s.exit_low, s.exit_high) for s in stages[:-1]]
    before, before_ms, _ = replay(current_t, current_bands)
    scores = [StageScores(s.name, sigmoid(z / t), ms) for s, z, t, ms in zip(stages, logits, temps, lat)]
    choice = tune_exit_thresholds(scores, labels, latency_budget_ms, seed=seed, n_shuffles=N_SHUFFLES)
    after, after_ms, exit_stage = replay(temps, choice.bands)
    current_fits = before_ms <= latency_budget_ms
    kept = current_fits and (before.steady_mean_reward > after.steady_mean_reward or not choice.within_budget)
    if kept:
        temps_out, bands_out, after, after_ms = current_t, current_bands, before, before_ms
        _, _, exit_stage = replay(current_t, current_bands)
    else:
        temps_out, bands_out = temps, [_bands_to_thresholds(b) for b in choice.bands]
    overrides = {}
    for k, stage in enumerate(stages):
        low, high = bands_out[k] if k < len(bands_out) else (stage.exit_low, stage.exit_high)
        overrides[stage.name] = (round(float(low), 6), round(float(high), 6), round(float(temps_out[k]), 6))
    rates = np.bincount(exit_stage, minlength=len(stages)) / max(exit_stage.size, 1)
    return TuneResult(overrides, before.steady_mean_reward, after.steady_mean_reward, before_ms, after_ms,
                      [float(r) for r in rates], after_ms <= latency_budget_ms, kept)


# ---------------------------------------------------------------------------------- config rewrite

_HEADER = re.compile(r"^\s*\[")
_STAGES = re.compile(r"^\s*\[\[\s*stages\s*\]\]\s*(#.*)?$")
_NAME = re.compile(r"""^\s*name\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_INLINE = re.compile(r"""(\{[^{}]*?\bname\s*=\s*(?:"([^"]*)"|'([^']*)')[^{}]*\})""")


def _edit_inline(line: str, name: str, values: tuple[float, float, float]) -> str:
    for m in _INLINE.finditer(line):
        if name not in (m.group(2), m.group(3)):
            continue
        table = m.group(1)
        body = table[1:-1].rstrip().rstrip(",")
        for key, value in zip(("exit_low", "exit_high", "temperature"), values):
            pattern = re.compile(rf"(\b{key}\s*=\s*)[^,}}]+")
            if pattern.search(body):
                body = pattern.sub(lambda mm: f"{mm.group(1)}{float(value)!r}", body, count=1)
            else:
                body = f"{body}, {key} = {float(value)!r}"
        return line[: m.start(1)] + "{" + body.rstrip() + " }" + line[m.end(1) :]
    return line


def write_stage_overrides(config_path: str | Path, overrides: dict[str, tuple[float, float, float]]) -> None:
    """Set exit_low / exit_high / temperature in the config's [[stages]] tables, keeping every
    other line (comments included); the result is re-read and checked before it replaces the file."""
    from streetcascade.config import load_config

    path = Path(config_path)
    original = path.read_text(encoding="utf-8")
    lines = original.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _STAGES.match(line)]
    blocks = {}
    for k, start in enumerate(starts):
        end = next((j for j in range(start + 1, len(lines)) if _HEADER.match(lines[j])), len(lines))
        for j in range(start + 1, end):
            m = _NAME.match(lines[j])
            if m:
                blocks[m.group(1) if m.group(1) is not None else m.group(2)] = (start, end)
                break
    inline = {}  # single-line inline tables: stages = [ { name = "stage1", ... }, ]
    for j, line in enumerate(lines):
        for m in _INLINE.finditer(line):
            inline.setdefault(m.group(2) if m.group(2) is not None else m.group(3), j)
    missing = sorted(set(overrides) - set(blocks) - set(inline))
    if missing:
        values = "; ".join(f"{n}: exit_low={v[0]}, exit_high={v[1]}, temperature={v[2]}" for n, v in overrides.items())
        raise ConfigError(f"{path}: no [[stages]] table for {missing} (inline tables are not rewritten); set by hand: {values}")
    # Edit bottom-up so earlier line numbers stay valid.
    for name, (start, end) in sorted(blocks.items(), key=lambda kv: -kv[1][0]):
        if name not in overrides:
            continue
        low, high, temperature = overrides[name]
        for key, value in (("exit_low", low), ("exit_high", high), ("temperature", temperature)):
            pattern = re.compile(rf"^(\s*){key}\s*=\s*[^#\n]*?(\s*#.*)?(\r?\n)?$")
            text = repr(float(value))
            for j in range(start + 1, end):
                m = pattern.match(lines[j])
                if m:
                    lines[j] = f"{m.group(1)}{key} = {text}{m.group(2) or ''}{m.group(3) or ''}"
                    break
            else:
                last = max(j for j in range(start, end) if lines[j].strip() and not lines[j].lstrip().startswith("#"))
                if not lines[last].endswith("\n"):
                    lines[last] += "\n"
                lines.insert(last + 1, f"{key} = {text}\n")
                end += 1
    for name, j in inline.items():
        if name in overrides and name not in blocks:
            lines[j] = _edit_inline(lines[j], name, overrides[name])
    tmp = path.with_name(f".{path.name}.tune-{os.getpid()}")
    tmp.write_text("".join(lines), encoding="utf-8")
    try:
        config = load_config(tmp)
        got = {s.name: (s.exit_low, s.exit_high, s.temperature) for s in config.stages}
        for name, want in overrides.items():
            if not np.allclose(got[name], want):
                raise ConfigError(f"{path}: rewriting stage {name} gave {got[name]}, expected {want}; file left unchanged")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
