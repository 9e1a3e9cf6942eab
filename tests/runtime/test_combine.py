"""The combination rule: a later stage's evidence moves the earlier probability; the cascade
hands evidence stages the earlier answer; the rule's weights are fitted from labelled data."""

import numpy as np
import pytest
from streetcascade.runtime import Cascade, ClassifierStage
from streetcascade.runtime.backends.fake import FakeEngine
from streetcascade.evidence import LogOddsRule, Vocabulary, logit, sigmoid
from streetcascade.settings import StageThresholds

pytest.importorskip("rapidfuzz", exc_type=ImportError)
from streetcascade.runtime.evidence import find_phrases  # noqa: E402


class TextStage:
    """An evidence stage over given text (stands in for the OCR reader, which comes with its issue)."""

    name = "ocr"
    expected_ms = 1.0

    def __init__(self, text_of, rule=LogOddsRule(), vocabulary=Vocabulary()):
        self.text_of, self.rule, self.vocabulary, self.seen = text_of, rule, vocabulary, []

    def score(self, images):
        raise AssertionError("an evidence stage is asked with the earlier probabilities")

    def score_given(self, images, priors):
        out = []
        for img, prior in zip(images, priors):
            text = self.text_of(img)
            self.seen.append(text)
            out.append(self.rule.combine(prior, self.vocabulary.has_text(text), bool(find_phrases(self.vocabulary, text))))
        return np.array(out)

    def exits(self, p):
        return True


def test_unsure_stage_one_then_the_sign_decides():
    texts = {100: "ROAD WORK AHEAD", 101: "PARKING", 102: ""}
    unsure = ClassifierStage("stage1", FakeEngine(), 224, StageThresholds(exit_low=0.05, exit_high=0.95))
    ocr = TextStage(lambda img: texts[int(img[0, 0, 0])])
    cascade = Cascade([unsure, ocr], safety_margin_ms=0)
    work, parking, blank = (cascade.classify(np.full((64, 64, 3), v, np.uint8)) for v in (100, 101, 102))
    prior = unsure.score([np.full((64, 64, 3), 100, np.uint8)])[0]
    assert 0.05 < prior < 0.95  # stage 1 is unsure about all three
    assert work.stage == "ocr" and work.label == 1 and work.probability > 0.9
    assert parking.label == 0 and parking.probability < unsure.score([np.full((64, 64, 3), 101, np.uint8)])[0]
    assert blank.probability == pytest.approx(unsure.score([np.full((64, 64, 3), 102, np.uint8)])[0], abs=1e-9)  # no text: prior kept


def test_confident_stage_one_never_reaches_the_reader():
    ocr = TextStage(lambda img: "ROAD WORK")
    cascade = Cascade([ClassifierStage("stage1", FakeEngine(), 224), ocr], safety_margin_ms=0)
    d = cascade.classify(np.full((64, 64, 3), 250, np.uint8))  # FakeEngine: very bright -> p ~ 1
    assert d.stage == "stage1" and ocr.seen == []


def test_rule_arithmetic():
    rule = LogOddsRule(hit=4.0, text_without_hit=-0.5, no_text=0.0)
    assert rule.combine(0.5, True, True) == pytest.approx(sigmoid(4.0))
    assert rule.combine(0.5, True, False) == pytest.approx(sigmoid(-0.5))
    assert rule.combine(0.3, False, False) == pytest.approx(0.3)
    assert logit(0.0) < -10 and logit(1.0) > 10  # clipped, finite


def test_fit_recovers_the_weights():
    rng = np.random.default_rng(0)
    n = 4000
    priors = rng.uniform(0.2, 0.8, n)
    hits = rng.random(n) < 0.3
    texts = hits | (rng.random(n) < 0.4)
    true = LogOddsRule(hit=3.0, text_without_hit=-1.0, no_text=0.2)
    p = np.array([true.combine(pr, t, h) for pr, t, h in zip(priors, texts, hits)])
    labels = (rng.random(n) < p).astype(int)
    fitted = LogOddsRule.fit(priors, texts, hits, labels)
    assert fitted.hit == pytest.approx(3.0, abs=0.4)
    assert fitted.text_without_hit == pytest.approx(-1.0, abs=0.3)
    assert fitted.no_text == pytest.approx(0.2, abs=0.3)
    only_hits = LogOddsRule.fit([0.5, 0.5], [True, True], [True, True], [1, 1])
    assert only_hits.text_without_hit == LogOddsRule().text_without_hit  # unseen case keeps its default
    with pytest.raises(ValueError):
        LogOddsRule.fit([], [], [], [])
