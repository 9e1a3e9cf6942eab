"""The validators' reward against hand-computed cases (natix/validator/reward.py + miner_performance_tracker.py)."""

import math
from collections import deque

import numpy as np
import pytest
from streetcascade.calibration.reward import (
    ACC_WINDOW,
    HISTORY_LEN,
    MCC_WINDOW,
    NO_ANSWER,
    REWARD_EXPONENT,
    WindowMetrics,
    penalty,
    reward_stream,
    simulate_reward,
    window_metrics,
)

from streetcascade.errors import BadInput


class MinerHistory:
    """The oracle: one miner's history kept step by step as a validator does (per uid, reset on
    a hotkey change); `reward_stream` is the vectorised version tested against it."""

    def __init__(self, hotkey: str = "") -> None:
        self.hotkey = hotkey
        self.predictions: deque[float] = deque(maxlen=HISTORY_LEN)
        self.labels: deque[int] = deque(maxlen=HISTORY_LEN)

    def metrics(self, window: int) -> WindowMetrics:
        n = min(window, len(self.predictions))
        preds = list(self.predictions)[len(self.predictions) - n :]
        labs = list(self.labels)[len(self.labels) - n :]
        return window_metrics(preds, labs)

    def score(self, prediction: float, label: int, hotkey: str | None = None) -> float:
        """Record one challenge and return the reward the validator gives for it."""
        if hotkey is not None and hotkey != self.hotkey:
            self.__init__(hotkey)
        prediction = float(prediction)
        self.predictions.append(prediction)
        self.labels.append(int(label))
        if prediction == NO_ANSWER:
            return 0.0
        value = 0.5 * self.metrics(MCC_WINDOW).mcc + 0.5 * self.metrics(ACC_WINDOW).accuracy
        return (value * penalty(prediction)) ** REWARD_EXPONENT


def _rewards(preds, labels):
    history = MinerHistory("hk")
    return [history.score(p, y) for p, y in zip(preds, labels)]


def test_first_correct_answer_has_one_class_window_so_mcc_is_zero():
    assert _rewards([0.9], [1]) == [pytest.approx(0.5**3)]  # (0.5 * 0 + 0.5 * 1) ** 3


def test_all_one_class_window_caps_reward_at_an_eighth():
    rewards = _rewards([0.99] * 12, [1] * 12)
    assert rewards == [pytest.approx(0.125)] * 12
    # one class predicted while labels are mixed: mcc 0 as well
    assert _rewards([0.1, 0.2], [1, 0])[-1] == pytest.approx((0.5 * 0 + 0.5 * 0.5) ** 3)


def test_no_answer_scores_zero_and_is_dropped_from_the_windows():
    rewards = _rewards([0.9, -1, 0.2], [1, 0, 0])
    assert rewards[1] == 0.0
    assert rewards[2] == pytest.approx(1.0)  # kept: (1 -> 1), (0 -> 0): acc 1, mcc 1


def test_no_answers_use_up_window_slots():
    # 10 right answers, then 10 timeouts: the 10-window holds only -1 -> accuracy 0.
    preds = [1.0, 0.0] * 5 + [-1] * 10 + [1.0]
    labels = [1, 0] * 5 + [0] * 10 + [1]
    rewards = _rewards(preds, labels)
    acc10 = 1.0  # the last 10 entries: 9 x -1 and the final right answer
    mcc100 = 1.0
    assert rewards[-1] == pytest.approx((0.5 * mcc100 + 0.5 * acc10) ** 3)
    assert window_metrics([-1] * 10, [0] * 10).accuracy == 0.0


def test_half_rounds_to_no_roadwork():
    assert window_metrics([0.5], [0]).accuracy == 1.0
    assert window_metrics([0.5], [1]).accuracy == 0.0
    assert window_metrics([0.5000001], [1]).accuracy == 1.0


def test_mixed_window_hand_computed():
    # rounded [1, 0, 0, 0] vs labels [1, 0, 1, 0]: tp 1, tn 2, fp 0, fn 1
    mcc = (1 * 2 - 0 * 1) / math.sqrt((1 + 0) * (1 + 1) * (2 + 0) * (2 + 1))
    assert window_metrics([0.9, 0.1, 0.2, 0.1], [1, 0, 1, 0]).mcc == pytest.approx(mcc)
    assert _rewards([0.9, 0.1, 0.2, 0.1], [1, 0, 1, 0])[-1] == pytest.approx((0.5 * mcc + 0.5 * 0.75) ** 3)


def test_negative_mcc_is_clipped_to_zero():
    assert window_metrics([0.1, 0.9], [1, 0]) == window_metrics([0.1, 0.9], [1, 0]).__class__(0.0, 0.0)
    assert _rewards([0.1, 0.9], [1, 0])[-1] == 0.0


def test_accuracy_window_is_10_and_mcc_window_is_100():
    labels = [1, 0] * 10
    preds = [1 - y for y in labels[:10]] + [float(y) for y in labels[10:]]  # 10 wrong, then 10 right
    # mcc over 20: tp 5, tn 5, fp 5, fn 5 -> 0; accuracy over the last 10 -> 1
    assert _rewards(preds, labels)[-1] == pytest.approx(0.125)
    # 50 wrong then 100 right: the wrong ones have left the 100-long history
    labels = [1, 0] * 75
    preds = [1 - y for y in labels[:50]] + [float(y) for y in labels[50:]]
    assert _rewards(preds, labels)[-1] == pytest.approx(1.0)


def test_out_of_range_answers_are_penalised_and_rounded_outside_values_poison_the_windows():
    # 1.2 rounds to 1 (a valid answer for the windows) but earns 0 itself
    rewards = _rewards([1.0, 0.0, 1.2, 0.0], [1, 0, 1, 0])
    assert rewards[2] == 0.0 and rewards[3] == pytest.approx(1.0)
    # 1.6 rounds to 2: sklearn's precision_score raises -> all-zero metrics while it is in a window
    labels = [1, 0] * 11
    preds = [1.6] + [float(y) for y in labels[1:]]
    rewards = _rewards(preds, labels)
    assert rewards[0] == 0.0 and all(r == 0.0 for r in rewards[1:10])
    assert rewards[10] == pytest.approx(0.125)  # left the 10-window; still poisons the 100-window
    # NaN: not penalised by compute_penalty, but the metrics are empty
    assert _rewards([float("nan")], [1]) == [0.0]
    # -0.7 rounds to -1.0, which is not the -1 sentinel (that compares the raw answer)
    assert window_metrics([-0.7, 1.0], [0, 1]) == window_metrics([], [])


def test_hotkey_change_resets_history():
    history = MinerHistory("a")
    for p, y in [(0.0, 1)] * 5:
        history.score(p, y, hotkey="a")
    assert history.score(1.0, 1, hotkey="a") == pytest.approx((0.5 * 0 + 0.5 * 1 / 6) ** 3)
    assert history.score(1.0, 1, hotkey="b") == pytest.approx(0.125)


def test_vectorised_stream_equals_the_step_by_step_tracker():
    rng = np.random.default_rng(0)
    specials = np.array([-1.0, 0.5, 1.6, -0.7, 1.2, np.nan, -1.0, 0.0, 1.0])
    for trial in range(6):
        n = 260
        labels = rng.integers(0, 2, n)
        preds = np.clip(labels + rng.normal(0, 0.45, n), 0, 1)
        if trial % 2:
            idx = rng.choice(n, 12, replace=False)
            preds[idx] = rng.choice(specials, 12)
        if trial == 4:
            labels[:150] = 1  # long one-class stretch
        expected = _rewards(preds, labels)
        np.testing.assert_allclose(reward_stream(preds, labels), expected, rtol=1e-12, atol=1e-15)


def test_simulated_reward_for_perfect_constant_and_silent_miners():
    labels = np.array([0, 1] * 100)
    perfect = simulate_reward(labels.astype(float), labels, seed=1, n_shuffles=3)
    assert perfect.steady_mean_reward == pytest.approx(1.0)
    assert perfect.answer_rate == 1.0 and perfect.n_challenges == 200
    silent = simulate_reward(np.full(200, -1.0), labels, seed=1, n_shuffles=2)
    assert silent.mean_reward == 0.0 and silent.answer_rate == 0.0
    constant = simulate_reward(np.full(200, 0.3), labels, seed=1, n_shuffles=5)
    assert 0.0 < constant.steady_mean_reward < 0.03  # mcc 0, acc10 ~ 0.5 -> ~0.25**3
    # 90% accurate: BRIEF quotes (0.5 * 0.8 + 0.5 * 0.9) ** 3 = 0.61 for the steady state
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 2000)
    preds = np.where(rng.random(2000) < 0.9, labels, 1 - labels).astype(float)
    ninety = simulate_reward(preds, labels, seed=3, n_shuffles=4)
    assert ninety.steady_mean_reward == pytest.approx(0.61, abs=0.04)
    assert 0 < ninety.final_ema_score <= 1 and ninety.p05_reward < ninety.steady_mean_reward
    longer = simulate_reward(preds[:50], labels[:50], seed=3, n_shuffles=1, length=500)
    assert longer.n_challenges == 500


def test_simulate_reward_is_seeded():
    labels = np.array([0, 1] * 80)
    preds = np.clip(labels + np.random.default_rng(0).normal(0, 0.4, 160), 0, 1)
    assert simulate_reward(preds, labels, seed=5) == simulate_reward(preds, labels, seed=5)


@pytest.mark.parametrize(
    "preds, labels, kwargs",
    [([0.1], [1, 0], {}), ([], [], {}), ([0.2], [2], {}), ([0.2], [1], {"n_shuffles": 0}), ([0.2], [1], {"length": 0})],
)
def test_simulate_reward_bad_input(preds, labels, kwargs):
    with pytest.raises(BadInput):
        simulate_reward(preds, labels, **kwargs)
