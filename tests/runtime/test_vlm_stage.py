"""Stage kind "vlm" in the cascade: the compiled judge (a tiny Qwen3-VL of the real classes)
moves the earlier stage's probability by its log-odds, is skipped with a counted fallback when
the deadline cannot hold it, refuses bad images, and runs with torch and transformers absent."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tokenizers", exc_type=ImportError)

from streetcascade.runtime import Cascade, ClassifierStage, load_engine_set  # noqa: E402
from streetcascade.runtime.backends.fake import FakeEngine  # noqa: E402
from support import REPO, SAMPLES, run_python  # noqa: E402

from streetcascade.errors import BadInput  # noqa: E402
from streetcascade.evidence import LogOddsRule, logit, sigmoid  # noqa: E402
from streetcascade.settings import StageThresholds  # noqa: E402

GREY = np.full((224, 224, 3), 130, np.uint8)  # the fake stage 1: p ~ 0.52, unsure


@pytest.fixture(scope="module")
def judge_set(tiny_vlm):
    _, dest = tiny_vlm("qwen3-vl")
    with load_engine_set(dest) as es:
        yield es


def unsure_stage1():
    return ClassifierStage("stage1", FakeEngine(), 224, StageThresholds(exit_low=0.05, exit_high=0.95))


def test_the_judge_moves_the_earlier_probability_by_its_log_odds(judge_set):
    judge = judge_set.cascade.stages[0]
    judge.rule = LogOddsRule(judge=0.8, judge_bias=-0.3)
    stage1 = unsure_stage1()
    cascade = Cascade([stage1, judge], safety_margin_ms=0)
    prior = float(stage1.score([GREY])[0])
    p_yes = float(judge.judge_probabilities([GREY])[0])
    d = cascade.classify(GREY)
    assert d.stage == judge.name and not d.fallback
    assert d.probability == pytest.approx(sigmoid(logit(prior) + 0.8 * logit(p_yes) - 0.3), abs=1e-9)
    assert judge.score([GREY])[0] == pytest.approx(p_yes)  # alone: p(yes)
    batch = cascade.classify_batch([GREY, np.full((300, 180, 3), 128, np.uint8)])  # two images, two sizes: one left-padded prefill
    assert batch[0].probability == pytest.approx(d.probability, abs=1e-6)


def test_a_judge_the_deadline_cannot_hold_is_skipped_and_counted(judge_set):
    judge = judge_set.cascade.stages[0]
    cascade = Cascade([unsure_stage1(), judge], safety_margin_ms=0)
    assert judge.expected_ms > 0  # measured at compile time, then tracked
    d = cascade.classify(GREY, deadline_ms=judge.expected_ms / 4)
    assert d.stage == "stage1" and d.fallback
    assert cascade.counters["fallbacks"] == 1 and cascade.counters[f"deadline_skips.{judge.name}"] == 1


def test_bad_images_are_bad_input(judge_set):
    cascade = Cascade([judge_set.cascade.stages[0]])
    for bad in (np.zeros((40, 40), np.uint8), np.zeros((40, 40, 4), np.uint8), np.zeros((2, 900, 3), np.uint8)):
        with pytest.raises(BadInput):
            cascade.classify(bad)


def test_fit_judge_recovers_the_weights():
    rng = np.random.default_rng(0)
    n = 4000
    priors, p_yes = rng.uniform(0.1, 0.9, n), rng.uniform(0.02, 0.98, n)
    true = LogOddsRule(judge=1.7, judge_bias=-0.6)
    labels = (rng.random(n) < np.array([true.combine_judge(a, b) for a, b in zip(priors, p_yes)])).astype(int)
    fitted = LogOddsRule.fit_judge(priors, p_yes, labels)
    assert fitted.judge == pytest.approx(1.7, abs=0.25) and fitted.judge_bias == pytest.approx(-0.6, abs=0.2)
    assert (fitted.hit, fitted.no_text) == (LogOddsRule().hit, LogOddsRule().no_text)
    with pytest.raises(ValueError):
        LogOddsRule.fit_judge([0.5], [0.5, 0.6], [1])


@pytest.mark.parametrize("family", ["qwen2.5-vl", "smolvlm"])
def test_the_judge_runs_without_torch_or_transformers(tiny_vlm, family):
    _, dest = tiny_vlm(family)
    code = f"""
import sys
sys.path.insert(0, {str(REPO / 'tests')!r})
for name in ('torch', 'transformers', 'onnx', 'onnxscript', 'safetensors'):
    sys.modules[name] = None
import numpy as np
from streetcascade.runtime import load_engine_set, decode_image
with load_engine_set({str(dest)!r}) as es:
    d = es.cascade.classify(decode_image(open({str(SAMPLES / 'street-barrier.jpg')!r}, 'rb').read()))
    print(round(d.probability, 6), d.stage)
assert not [m for m in ('torch', 'transformers') if sys.modules.get(m) is not None]
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    p, stage = r.stdout.split()[-2:]
    assert 0.0 < float(p) < 1.0 and stage == "judge"
