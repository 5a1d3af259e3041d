"""Drift decisions match Evidently 0.7.23's DataDriftPreset column by column, on real Elec2 windows
(which include its constant imputed columns) and on small synthetic samples for every test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_assets.core.drift import column_drift, dataset_drift, wasserstein_binned, wasserstein_exact
from mlops_assets_tests.conftest import DATA_DIR
from mlops_assets_tests.evidently_reference import EVIDENTLY_METHOD_NAMES, evidently_decisions

pytest.importorskip("evidently")


@pytest.fixture(scope="module")
def elec2() -> pd.DataFrame:
    df = pd.read_csv(DATA_DIR / "elec2" / "elec2_with_timestamp.csv").drop(columns=["timestamp"])
    return df


# (reference rows, current rows): large references use Wasserstein / Jensen-Shannon, small ones
# KS / chi-square / Z. Windows before row 17,424 have constant vicprice/vicdemand/transfer.
WINDOWS = [
    ((0, 2000), (2000, 3000)),  # constant reference columns, no change
    ((0, 2000), (20000, 21000)),  # constant reference vs real values: drift
    ((30000, 34000), (34000, 36000)),
    ((40000, 42000), (42000, 42500)),
    ((10000, 10800), (10800, 11400)),  # small reference: KS and chi-square
    ((25000, 25500), (44000, 44300)),
]


@pytest.mark.parametrize(("ref_rows", "cur_rows"), WINDOWS, ids=[f"{r[0]}-{c[0]}" for r, c in WINDOWS])
def test_same_decisions_as_evidently_on_elec2(elec2, ref_rows, cur_rows):
    reference = elec2.iloc[slice(*ref_rows)].reset_index(drop=True)
    current = elec2.iloc[slice(*cur_rows)].reset_index(drop=True)
    theirs = evidently_decisions(reference, current)
    ours = dataset_drift(reference, current, list(theirs), categorical=["class"])
    for col in ours.columns:
        method, score, drifted = theirs[col.column]
        assert col.method == EVIDENTLY_METHOD_NAMES[method], col.column
        assert col.drifted == drifted, (col.column, col.score, score)
        assert col.score == pytest.approx(score, rel=1e-3, abs=1e-6), col.column


def test_constant_reference_is_finite_flagged_and_decided_like_evidently(elec2):
    """Elec2's vicprice is one imputed value until row 17,424: its float std is ~1e-18, not 0."""
    reference = elec2.iloc[:2000]
    assert 0 < np.std(reference["vicprice"]) < 1e-12
    for current in (elec2.iloc[20000:21000], elec2.iloc[40000:41000], elec2.iloc[2000:3000]):
        theirs = evidently_decisions(reference[["vicprice"]], current[["vicprice"]].reset_index(drop=True))["vicprice"]
        ours = column_drift(reference["vicprice"], current["vicprice"])
        assert ours.constant_reference and np.isfinite(ours.score) and ours.score < 1e6
        assert ours.drifted == theirs[2]
        assert ours.score == pytest.approx(theirs[1], rel=1e-3, abs=1e-9)
    assert column_drift(reference["vicprice"], elec2["vicprice"].iloc[2000:3000]).score == 0


def _synthetic(seed: int, n_ref: int, n_cur: int, shift: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def frame(n, s):
        return pd.DataFrame(
            {
                "x": rng.normal(s, 1, n),
                "few": rng.integers(0, 4 + (s > 0), n).astype(float),  # 4-5 distinct numeric values
                "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2] if s == 0 else [0.3, 0.3, 0.4]),
                "flag": rng.choice(["yes", "no"], n, p=[0.5, 0.5] if s == 0 else [0.35, 0.65]),
            }
        )

    return frame(n_ref, 0), frame(n_cur, shift)


@pytest.mark.parametrize("n_ref", [300, 5000])
@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_same_decisions_as_evidently_on_every_test(n_ref, shift):
    reference, current = _synthetic(int(n_ref + shift * 10), n_ref, 400, shift)
    theirs = evidently_decisions(reference, current)
    ours = dataset_drift(reference, current, list(theirs), categorical=["color", "flag"])
    for col in ours.columns:
        method, score, drifted = theirs[col.column]
        assert col.method == EVIDENTLY_METHOD_NAMES[method], col.column
        assert col.drifted == drifted, (col.column, col.score, score)
        assert col.score == pytest.approx(score, rel=1e-6, abs=1e-9), col.column


def test_missing_values_are_reported_not_tested():
    reference = pd.Series([1.0, 2, 3, np.nan, np.inf] * 100, name="x")
    current = pd.Series([1.0, 2, 3, 4, np.nan] * 100, name="x")
    result = column_drift(reference, current)
    assert result.reference_missing_share == pytest.approx(0.2) and result.reference_non_finite == 100
    assert result.current_missing_share == pytest.approx(0.2)
    assert result.reference_rows == 300 and result.current_rows == 400
    with pytest.raises(ValueError, match="column 'x': no non-missing values in the current data"):
        column_drift(reference, pd.Series([np.nan] * 5, name="x"))


def test_binned_wasserstein_error_bound_holds_and_decisions_are_exact_near_the_threshold():
    rng = np.random.default_rng(7)
    ref = rng.standard_t(3, 200_000)  # heavy tails: wide range, so bins are coarse relative to std
    for shift in (0.0, 0.05, 0.1, 0.2):
        cur = rng.standard_t(3, 100_000) + shift
        estimate, error = wasserstein_binned(ref, cur)
        exact = wasserstein_exact(ref, cur)
        assert abs(estimate - exact) <= error
        result = column_drift(pd.Series(ref), pd.Series(cur))
        assert result.drifted == (exact / np.std(ref) >= 0.1)


def test_psi_bands_and_dataset_drift_share():
    rng = np.random.default_rng(3)
    reference = pd.DataFrame({f"c{i}": rng.normal(0, 1, 3000) for i in range(4)})
    current = reference.copy()
    current["c0"] += 1.0
    current["c1"] += 1.0
    result = dataset_drift(reference, current)
    assert [c.drifted for c in result.columns] == [True, True, False, False]
    assert result.drifted_share == 0.5 and result.drifted
    assert not dataset_drift(reference, current, drift_share=0.6).drifted
    stable = column_drift(reference["c2"], current["c2"], method="psi")
    moved = column_drift(reference["c0"], current["c0"], method="psi")
    assert stable.score < 0.1 and not stable.drifted
    assert moved.score >= 0.25 and moved.drifted
    assert set(result.table().columns) >= {"column", "method", "score", "threshold", "drifted"}


def test_a_column_without_values_on_one_side_is_reported_not_tested():
    """E.g. a past-rate feature on the first day of history: all missing in the reference."""
    rng = np.random.default_rng(5)
    reference = pd.DataFrame({"rate": [np.nan] * 2000, "x": rng.normal(0, 1, 2000), "y": rng.normal(0, 1, 2000)})
    current = pd.DataFrame({"rate": rng.uniform(0, 1, 500), "x": rng.normal(1, 1, 500), "y": rng.normal(0, 1, 500)})
    result = dataset_drift(reference, current)
    rate = next(c for c in result.columns if c.column == "rate")
    assert rate.method == "not_tested" and not rate.drifted and rate.reference_missing_share == 1.0
    assert result.drifted_share == 0.5  # x drifted, y did not; rate not counted
