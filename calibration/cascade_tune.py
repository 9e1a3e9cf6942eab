"""`streetcascade tune`: temperatures and exit thresholds for a compiled cascade, fitted on
labelled challenges (validator mix) for the validators' reward.

Every stage scores every challenge once (logits; an evidence stage such as OCR reads it once,
and its combination rule is fitted on the previous stage's calibrated probability), a
temperature is fitted per stage, and
`tune_exit_thresholds` picks exit bands maximising the simulated reward within a mean latency
budget; the current setting is scored on the same shuffles and kept unless beaten, so re-running
eval on the same data never gives a lower reward. `streetcascade.config.write_stage_thresholds`
writes the result into the config, which `classify/eval/serve --config` apply.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import msgspec
import numpy as np

from streetcascade.calibration.cascade_eval import N_SHUFFLES
from streetcascade.calibration.reward import simulate_reward
from streetcascade.calibration.source import ChallengeSet
from streetcascade.calibration.tune import StageScores, fit_temperature, mean_latency_ms, run_cascade, tune_exit_thresholds
from streetcascade.errors import BadInput
from streetcascade.evidence import LogOddsRule
from streetcascade.progress import QUIET, Progress
from streetcascade.runtime.classifier import sigmoid
from streetcascade.settings import StageThresholds

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 16  # batch-1 timings per stage


@dataclass
class TuneResult:
    thresholds: dict[str, StageThresholds]  # per stage name, ready for write_stage_thresholds
    reward_before: float
    reward_after: float
    latency_before_ms: float
    latency_after_ms: float
    exit_rates: list[float]
    within_budget: bool
    kept_current: bool
    # Evidence stages (OCR, VLM judge): the fitted combination rule, per stage name.
    rules: dict[str, LogOddsRule] = field(default_factory=dict)


def stage_logits(stage, images: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Raw logits of one stage on every image (batched), and its batch-1 latency (ms, median
    over the first LATENCY_SAMPLES images)."""
    logits = stage.logits(images)
    times = []
    for img in images[:LATENCY_SAMPLES]:
        t0 = time.perf_counter()
        stage.logits([img])
        times.append((time.perf_counter() - t0) * 1000.0)
    return logits, float(np.median(times))


@dataclass
class OcrFeatures:
    """What an OCR stage found on every challenge: readable text, a roadwork phrase."""

    has_text: np.ndarray
    hit: np.ndarray

    def combine(self, rule: LogOddsRule, prior: np.ndarray) -> np.ndarray:
        return np.array([rule.combine(float(p), bool(t), bool(h)) for p, t, h in zip(prior, self.has_text, self.hit)])

    def fit(self, prior: np.ndarray, labels: np.ndarray) -> LogOddsRule:
        return LogOddsRule.fit(prior, self.has_text, self.hit, labels)

    def describe(self) -> str:
        return f"text on {100 * self.has_text.mean():.0f}%, a roadwork phrase on {100 * self.hit.mean():.0f}%"


@dataclass
class JudgeFeatures:
    """A VLM judge's p(yes) on every challenge."""

    p_yes: np.ndarray

    def combine(self, rule: LogOddsRule, prior: np.ndarray) -> np.ndarray:
        return np.array([rule.combine_judge(float(p), float(j)) for p, j in zip(prior, self.p_yes)])

    def fit(self, prior: np.ndarray, labels: np.ndarray) -> LogOddsRule:
        return LogOddsRule.fit_judge(prior, self.p_yes, labels)

    def describe(self) -> str:
        return f"p(yes) > 0.5 on {100 * np.mean(self.p_yes > 0.5):.0f}%"


EvidenceFeatures = OcrFeatures | JudgeFeatures


def evidence_features(stage, images: list[np.ndarray]) -> tuple[EvidenceFeatures, float]:
    """Read every image once with an evidence stage (or ask the judge); its per-image latency
    (ms, median of the first LATENCY_SAMPLES)."""
    if hasattr(stage, "judge_probabilities"):  # a VLM judge: p(yes) per image
        p, times = [], []
        for img in images:
            t0 = time.perf_counter()
            p.append(float(stage.judge_probabilities([img])[0]))
            times.append((time.perf_counter() - t0) * 1000.0)
        return JudgeFeatures(np.array(p)), float(np.median(times[:LATENCY_SAMPLES]))
    from streetcascade.runtime.evidence import find_phrases

    has_text, hit, times = [], [], []
    for img in images:
        t0 = time.perf_counter()
        text = " | ".join(t for t, _ in stage.read(img))
        times.append((time.perf_counter() - t0) * 1000.0)
        has_text.append(stage.vocabulary.has_text(text))
        hit.append(bool(find_phrases(stage.vocabulary, text)) if text else False)
    return OcrFeatures(np.array(has_text, bool), np.array(hit, bool)), float(np.median(times[:LATENCY_SAMPLES]))


def _bands_to_thresholds(band: tuple[float, float]) -> tuple[float, float]:
    lo, hi = band
    if lo > hi:  # "never escalate": an empty band; the runtime needs low <= high
        return 0.5, 0.5
    return float(lo), float(hi)


def run_tune(engine_set, challenges: ChallengeSet, *, latency_budget_ms: float = math.inf, seed: int = 0, fit_temperatures: bool = True,
             progress: Progress = QUIET) -> TuneResult:
    if len(challenges) == 0:
        raise BadInput("no challenges to tune on (empty split?)")
    labels = challenges.labels
    if np.unique(labels).size < 2:
        raise BadInput("tuning needs both classes (roadwork and no_roadwork) in the data")
    stages = engine_set.cascade.stages
    logits, lat, temps = [], [], []
    evidence: dict[int, EvidenceFeatures] = {}  # stage index -> what it read (evidence stages)
    for k, stage in enumerate(progress.track(stages, f"tune: every stage on {len(challenges)} challenges")):
        if k > 0 and hasattr(stage, "score_given"):
            feats, ms = evidence_features(stage, challenges.images)
            evidence[k] = feats
            logits.append(None)
            lat.append(ms)
            temps.append(stage.thresholds.temperature)
            log.info("stage %s: %.2f ms per image, %s", stage.name, ms, feats.describe())
            continue
        z, ms = stage_logits(stage, challenges.images)
        logits.append(z)
        lat.append(ms)
        temps.append(fit_temperature(z, labels) if fit_temperatures else stage.thresholds.temperature)
        log.info("stage %s: %.2f ms per image, temperature %.3f", stage.name, ms, temps[-1])

    def chain(temperatures, rules) -> list[np.ndarray]:
        """Each stage's probability on every challenge; an evidence stage moves the previous one's."""
        probs = []
        for k, (z, t) in enumerate(zip(logits, temperatures)):
            probs.append(evidence[k].combine(rules[k], probs[k - 1]) if k in evidence else sigmoid(z / t))
        return probs

    def replay(temperatures, bands, rules):
        answers, exit_stage = run_cascade(chain(temperatures, rules), bands)
        return simulate_reward(answers, labels, seed=seed, n_shuffles=N_SHUFFLES), mean_latency_ms(exit_stage, lat), exit_stage

    current_t = [s.thresholds.temperature for s in stages]
    current_rules = {k: stages[k].rule for k in evidence}
    current_bands = [(s.thresholds.exit_low, s.thresholds.exit_high) for s in stages[:-1]]
    before, before_ms, _ = replay(current_t, current_bands, current_rules)
    # The combination rules are fitted on the earlier stage's calibrated probabilities.
    fitted_rules = {}
    for k in evidence:
        prior = chain(temps, {**current_rules, **fitted_rules})[k - 1]
        fitted_rules[k] = evidence[k].fit(prior, labels)
    probs = chain(temps, fitted_rules)
    scores = [StageScores(s.name, p, ms) for s, p, ms in zip(stages, probs, lat)]
    choice = tune_exit_thresholds(scores, labels, latency_budget_ms, seed=seed, n_shuffles=N_SHUFFLES)
    after, after_ms, exit_stage = replay(temps, choice.bands, fitted_rules)
    current_fits = before_ms <= latency_budget_ms
    kept = current_fits and (before.steady_mean_reward > after.steady_mean_reward or not choice.within_budget)
    if kept:
        temps_out, bands_out, rules_out, after, after_ms = current_t, current_bands, current_rules, before, before_ms
        _, _, exit_stage = replay(current_t, current_bands, current_rules)
    else:
        temps_out, bands_out, rules_out = temps, [_bands_to_thresholds(b) for b in choice.bands], fitted_rules
    thresholds = {}
    for k, stage in enumerate(stages):
        low, high = bands_out[k] if k < len(bands_out) else (stage.thresholds.exit_low, stage.thresholds.exit_high)
        thresholds[stage.name] = StageThresholds(round(float(low), 6), round(float(high), 6), round(float(temps_out[k]), 6))
    rules = {stages[k].name: LogOddsRule(**{f: round(float(v), 4) for f, v in msgspec.structs.asdict(r).items()}) for k, r in rules_out.items()}
    rates = np.bincount(exit_stage, minlength=len(stages)) / max(exit_stage.size, 1)
    return TuneResult(thresholds, before.steady_mean_reward, after.steady_mean_reward, before_ms, after_ms,
                      [float(r) for r in rates], after_ms <= latency_budget_ms, kept, rules)
