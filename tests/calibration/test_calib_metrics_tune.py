import math

import numpy as np
import pytest
from streetcascade.calibration import metrics
from streetcascade.calibration.tune import (
    NEVER_ESCALATE,
    StageScores,
    best_decision_threshold,
    fit_temperature,
    mean_latency_ms,
    reward_vs_threshold,
    run_cascade,
    sigmoid,
    tune_exit_thresholds,
)

from streetcascade.errors import BadInput


def test_accuracy_mcc_confusion_hand_computed():
    labels = [1, 1, 1, 0, 0, 0, 0]
    probs = [0.9, 0.6, 0.5, 0.5, 0.1, 0.7, 0.0]  # 0.5 -> 0 like the validator
    c = metrics.confusion(labels, probs)
    assert (c.tn, c.fp, c.fn, c.tp) == (3, 1, 1, 2)
    assert c.as_matrix() == [[3, 1], [1, 2]]
    assert metrics.accuracy(labels, probs) == pytest.approx(5 / 7)
    assert metrics.mcc(labels, probs) == pytest.approx((2 * 3 - 1 * 1) / math.sqrt(3 * 3 * 4 * 4))
    assert metrics.mcc([1, 1], [0.9, 0.8]) == 0.0  # one class: defined as 0


def test_auc_rank_based_with_ties_equals_pairwise_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    probs = np.round(rng.random(300), 1)  # many ties
    pos, neg = probs[labels == 1], probs[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert metrics.auc(labels, probs) == pytest.approx(pairwise)
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert math.isnan(metrics.auc([1, 1], [0.2, 0.3]))


def test_reliability_bins_and_ece():
    labels = [0, 0, 1, 1, 1]
    probs = [0.05, 0.15, 0.95, 1.0, 0.55]
    bins = metrics.reliability_bins(labels, probs, n_bins=10)
    assert bins.count == [1, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert bins.frac_positive[9] == 1.0 and bins.mean_prob[9] == pytest.approx(0.975)
    assert math.isnan(bins.mean_prob[2])
    expected = (0.05 + 0.15 + 0.45 + 2 * 0.025) / 5
    assert metrics.expected_calibration_error(labels, probs, 10) == pytest.approx(expected)
    assert metrics.log_loss([1], [1.0]) < 1e-6 and metrics.brier([1, 0], [0.5, 0.5]) == 0.25


@pytest.mark.parametrize("labels, probs", [([1, 2], [0.1, 0.2]), ([1], [1.5]), ([1], [float("nan")]), ([1, 0], [0.1]), ([[1]], [[0.1]])])
def test_metrics_bad_input(labels, probs):
    with pytest.raises(BadInput):
        metrics.accuracy(labels, probs)


def test_temperature_fit_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 6000)
    labels = (rng.random(6000) < sigmoid(true_logits)).astype(int)
    assert fit_temperature(true_logits * 3.0, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(true_logits / 2.0, labels) == pytest.approx(0.5, rel=0.1)
    calibrated = sigmoid(true_logits * 3.0 / fit_temperature(true_logits * 3.0, labels))
    assert metrics.expected_calibration_error(labels, calibrated) < metrics.expected_calibration_error(labels, sigmoid(true_logits * 3.0))


def test_temperature_edge_cases():
    assert fit_temperature([], []) == 1.0
    assert fit_temperature([0.0, 0.0], [0, 1]) == 1.0
    assert fit_temperature([-5.0, 5.0], [0, 1]) == pytest.approx(0.05)  # separable: sharpest allowed
    assert fit_temperature([-5.0, 5.0], [1, 0]) == pytest.approx(20.0)  # anti-separable: flattest
    with pytest.raises(BadInput):
        fit_temperature([1.0, float("inf")], [0, 1])
    with pytest.raises(BadInput):
        fit_temperature([1.0], [3])


def test_run_cascade_and_latency_hand_computed():
    s1 = np.array([0.05, 0.5, 0.95, 0.3])
    s2 = np.array([0.9, 0.8, 0.1, 0.2])
    answers, exits = run_cascade([s1, s2], [(0.1, 0.9)])
    assert answers.tolist() == [0.05, 0.8, 0.95, 0.2] and exits.tolist() == [0, 1, 0, 1]
    assert mean_latency_ms(exits, [10.0, 50.0]) == pytest.approx(10 + 0.5 * 50)
    answers, exits = run_cascade([s1, s2], [NEVER_ESCALATE])
    assert answers.tolist() == s1.tolist() and not exits.any()
    with pytest.raises(BadInput):
        run_cascade([s1, s2], [])


def _answers_right_with(labels, accuracy, rng):
    """A later stage known only by its accuracy: 1.0/0.0 answers, right with P = accuracy."""
    y = np.asarray(labels, dtype=np.float64)
    return np.where(rng.random(y.shape) < accuracy, y, 1.0 - y)


def _two_stage_problem(n=600, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    # stage 1: noisy, but confident answers are mostly right
    s1 = np.clip(np.where(labels == 1, 0.68, 0.32) + rng.normal(0, 0.22, n), 0, 1)
    s2 = _answers_right_with(labels, 0.98, rng)
    return labels, s1, s2


def test_tuning_escalates_uncertain_images_when_the_budget_allows():
    labels, s1, s2 = _two_stage_problem()
    stages = [StageScores("fast", s1, 10.0), StageScores("vlm", s2, 60.0)]
    grid = dict(lo_grid=(0.0, 0.2, 0.35, 0.5), hi_grid=(0.5, 0.65, 0.8, 1.0), n_shuffles=2)
    alone = tune_exit_thresholds(stages[:1], labels, 100.0)
    generous = tune_exit_thresholds(stages, labels, 100.0, **grid)
    assert generous.within_budget and generous.mean_latency_ms <= 100.0
    assert generous.steady_mean_reward > alone.steady_mean_reward + 0.1
    assert generous.exit_rates[1] > 0.2 and sum(generous.exit_rates) == pytest.approx(1.0)
    tight = tune_exit_thresholds(stages, labels, 10.0, **grid)
    assert tight.bands == [NEVER_ESCALATE] and tight.exit_rates == [1.0, 0.0] and tight.within_budget
    medium = tune_exit_thresholds(stages, labels, 30.0, **grid)
    assert medium.within_budget and medium.mean_latency_ms <= 30.0
    assert alone.steady_mean_reward <= medium.steady_mean_reward <= generous.steady_mean_reward
    impossible = tune_exit_thresholds(stages, labels, 5.0, **grid)
    assert not impossible.within_budget and impossible.mean_latency_ms == pytest.approx(10.0)


def test_three_stage_coordinate_ascent_runs():
    labels, s1, s3 = _two_stage_problem(n=300, seed=1)
    s2 = np.clip(s1 + np.random.default_rng(5).normal(0, 0.1, s1.size), 0, 1)
    stages = [StageScores("a", s1, 5.0), StageScores("b", s2, 10.0), StageScores("c", s3, 100.0)]
    choice = tune_exit_thresholds(stages, labels, 60.0, lo_grid=(0.3, 0.5), hi_grid=(0.5, 0.7), n_shuffles=1)
    assert len(choice.bands) == 2 and choice.within_budget and len(choice.exit_rates) == 3


def test_tuning_bad_input():
    with pytest.raises(BadInput):
        tune_exit_thresholds([StageScores("a", np.zeros(3), 1.0)], [0, 1], 10.0)
    with pytest.raises(BadInput):
        tune_exit_thresholds([StageScores("a", np.zeros(2), -1.0)], [0, 1], 10.0)
    with pytest.raises(BadInput):
        tune_exit_thresholds([], [0, 1], 10.0)


def test_reward_vs_threshold_finds_a_shifted_cut():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 1500)
    probs = np.clip(np.where(labels == 1, 0.4, 0.2) + rng.normal(0, 0.04, 1500), 0, 1)  # best cut ~0.3
    thresholds, rewards = reward_vs_threshold(probs, labels, n_shuffles=1)
    best = best_decision_threshold(thresholds, rewards)
    assert best == pytest.approx(0.3, abs=0.051)
    assert max(rewards) > rewards[thresholds.index(0.5)] + 0.5
    with pytest.raises(BadInput):
        best_decision_threshold([], [])
