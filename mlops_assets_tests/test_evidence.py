"""The gate's statistics (core.evidence) on constructed cases: a clear win, a tie, a win by chance,
autocorrelated rows, the size of the test under the null, and the metrics' own units."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as m

from mlops_assets.core.evidence import compare, long_run_variance

RNG = np.random.default_rng


def classification(n: int, skill_challenger: float, skill_champion: float, seed: int = 0):
    """Labels and two models' probabilities: each model's logit is skill * signal + its own noise."""
    rng = RNG(seed)
    signal = rng.normal(size=n)
    y = (signal + rng.normal(scale=0.8, size=n) > 0).astype(float)

    def model(skill: float):
        return 1 / (1 + np.exp(-(skill * signal + rng.normal(size=n))))

    return y, model(skill_challenger), model(skill_champion)


@pytest.mark.parametrize("metric", ["accuracy", "log_loss", "roc_auc", "f1"])
def test_a_clear_win_is_convincing(metric):
    y, challenger, champion = classification(3000, 3.0, 0.5)
    e = compare(metric, y, challenger, champion, margin=0.0, confidence=0.95)
    assert e.convincing and e.p_value < 1e-3 and e.low > 0 and e.improvement > 0


@pytest.mark.parametrize("metric", ["accuracy", "log_loss", "roc_auc", "f1", "rmse", "mae", "r2"])
def test_a_tie_is_not_evidence(metric):
    y, challenger, _ = classification(500, 1.0, 1.0)
    e = compare(metric, y, challenger, challenger.copy(), margin=0.0, confidence=0.5)
    assert not e.convincing and e.p_value == 1.0 and e.improvement == 0


def test_a_win_by_chance_is_not_convincing():
    """Two models that agree on 140 of 144 half-hours; on the other four the challenger is right
    three times and the champion once. The point estimate says +1.4 points of accuracy (and would
    promote); the test says that is not evidence, at any usual confidence."""
    y, base, _ = classification(144, 1.0, 1.0)
    champion = base.copy()
    challenger = base.copy()
    for i, challenger_right in zip(np.flatnonzero((base >= 0.5) != y)[:4], (True, True, True, False)):
        if challenger_right:
            challenger[i] = 0.9 if y[i] == 1 else 0.1
        else:
            champion[i], challenger[i] = (0.9, 0.1) if y[i] == 1 else (0.1, 0.9)
    e = compare("accuracy", y, challenger, champion, margin=0.0, confidence=0.9)
    assert e.improvement == pytest.approx(2 / 144)
    assert e.low < 0 < e.high and e.p_value > 0.1 and not e.convincing


def test_equal_models_are_rarely_promoted_and_the_point_estimate_often_would():
    chance, convinced = 0, 0
    for seed in range(40):
        e = compare("accuracy", *classification(144, 1.0, 1.0, seed=seed), margin=0.0, confidence=0.9)
        chance += e.improvement >= 0
        convinced += e.convincing
    assert chance >= 15 and convinced <= 4 + 3 * np.sqrt(40 * 0.1 * 0.9)


@pytest.mark.parametrize("metric", ["accuracy", "log_loss", "roc_auc"])
def test_under_the_null_the_gate_promotes_at_most_about_one_minus_confidence(metric):
    promoted = sum(
        compare(metric, *classification(400, 1.0, 1.0, seed=s), margin=0.0, confidence=0.9).convincing for s in range(200)
    )
    assert promoted <= 0.1 * 200 + 3 * np.sqrt(200 * 0.1 * 0.9)  # 10 % of 200, within three standard deviations


def test_autocorrelated_rows_count_for_what_they_are_worth():
    """Loss differences that come in runs (an AR(1) with rho 0.9, as neighbouring half-hours do):
    the long-run variance is several times the plain variance, so the test is not fooled."""
    rng = RNG(7)
    n, rho = 2000, 0.9
    d = np.empty(n)
    d[0] = rng.normal()
    for t in range(1, n):
        d[t] = rho * d[t - 1] + rng.normal()
    assert long_run_variance(d) > 5 * d.var()
    # the same in a gate: a regression holdout whose errors drift together, the challenger a hair
    # better on average; the long-run variance makes the test more careful than the plain one
    from scipy import stats

    y = np.zeros(n)
    champion = d.copy()
    challenger = 0.97 * d + rng.normal(scale=0.05, size=n)
    diff = champion**2 - challenger**2
    naive_p = stats.t.sf(diff.mean() / np.sqrt(diff.var() / n), n - 1)
    e = compare("rmse", y, challenger, champion, margin=0.0, confidence=0.99)
    assert e.improvement > 0 and e.p_value > 10 * naive_p


def test_improvements_are_in_the_metrics_own_units():
    rng = RNG(3)
    y = rng.normal(10, 3, size=800)
    champion, challenger = y + rng.normal(0, 2, size=800), y + rng.normal(0, 1, size=800)
    rmse = lambda s: np.sqrt(m.mean_squared_error(y, s))
    for metric, value in (
        ("rmse", rmse(champion) - rmse(challenger)),
        ("mae", m.mean_absolute_error(y, champion) - m.mean_absolute_error(y, challenger)),
        ("r2", m.r2_score(y, challenger) - m.r2_score(y, champion)),
    ):
        e = compare(metric, y, challenger, champion, margin=0.0, confidence=0.9)
        assert e.improvement == pytest.approx(value, rel=1e-9) and e.low < value < e.high and e.convincing
    labels, a, b = classification(1000, 2.0, 1.0)
    assert compare("roc_auc", labels, a, b, margin=0, confidence=0.9).improvement == pytest.approx(
        m.roc_auc_score(labels, a) - m.roc_auc_score(labels, b)
    )
    assert compare("f1", labels, a, b, margin=0, confidence=0.9).improvement == pytest.approx(
        m.f1_score(labels, a >= 0.5) - m.f1_score(labels, b >= 0.5)
    )


def test_the_margin_is_what_must_be_beaten():
    """A challenger 0.03 better in RMSE is convincing against margin 0 and not against margin 0.5."""
    rng = RNG(5)
    y = rng.normal(size=5000)
    champion, challenger = y + rng.normal(0, 1.0, size=5000), y + rng.normal(0, 0.9, size=5000)
    assert compare("rmse", y, challenger, champion, margin=0.0, confidence=0.95).convincing
    assert not compare("rmse", y, challenger, champion, margin=0.5, confidence=0.95).convincing
