"""The model card's statistics on constructed cases (``core.model_card``). The card a real training
run puts on the model asset and in MLflow: ``test_pipeline_flights``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlops_assets.core import model_card as mc


def _classified(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n)})
    y = (X["signal"] + 0.5 * rng.normal(size=n) > 0).astype(float).to_numpy()
    return X, y


def _predict(X: pd.DataFrame) -> np.ndarray:  # a model that reads "signal" only
    return 1 / (1 + np.exp(-2 * X["signal"].to_numpy()))


def test_intervals_hold_the_value_and_narrow_with_more_rows():
    widths = []
    for n in (200, 5000):
        X, y = _classified(n)
        intervals = {i["metric"]: i for i in mc.metric_intervals(y, _predict(X), ("roc_auc", "accuracy"))}
        for i in intervals.values():
            assert i["low"] <= i["value"] <= i["high"], i
        widths.append(intervals["roc_auc"]["high"] - intervals["roc_auc"]["low"])
    assert widths[1] < widths[0] / 2  # ~1/sqrt(25) as wide


def test_permutation_importance_finds_the_feature_the_model_reads():
    X, y = _classified(2000)
    rows = mc.permutation_importance(_predict, X, y, "roc_auc", higher_is_better=True)
    by = {r["feature"]: r for r in rows}
    assert rows[0]["feature"] == "signal" and by["signal"]["importance"] > 0.2
    assert by["noise"]["importance"] == 0.0 and by["noise"]["std"] == 0.0  # never read: shuffling changes nothing
    # a loss (lower is better) is signed the same way: worse when shuffled is a positive importance
    lossy = mc.permutation_importance(_predict, X, y, "log_loss", higher_is_better=False)
    assert lossy[0]["feature"] == "signal" and lossy[0]["importance"] > 0


def test_slices_come_worst_first_and_skip_small_or_undefined_ones():
    X, y = _classified(900, seed=1)
    scores = _predict(X)
    carrier = np.array(["AA"] * 400 + ["BB"] * 400 + ["CC"] * 20 + ["DD"] * 80, dtype=object)
    scores[400:800] = np.random.default_rng(2).uniform(size=400)  # BB's scores are noise
    y[820:900] = 1.0  # DD has one class only: its ROC AUC is undefined
    frame = pd.DataFrame({"carrier": carrier})
    rows, not_judged = mc.slice_metrics(frame, y, scores, ["carrier", "absent"], "roc_auc", higher_is_better=True)
    assert [r["value"] for r in rows] == ["BB", "AA"]  # worst first; CC (20 rows) too small
    assert rows[0]["gap"] < 0 < rows[1]["gap"] and not_judged == 1
    assert rows[0]["rows"] == 400 and 0.4 < rows[0]["roc_auc"] < 0.6


def test_the_card_reads_as_markdown_and_draws_its_importance():
    X, y = _classified(600)
    holdout = pd.DataFrame({"carrier": np.where(np.arange(600) % 2, "AA", "B<B")})
    card = mc.build_card(
        metric="roc_auc",
        higher_is_better=True,
        task="classification",
        predict=_predict,
        X_holdout=X,
        holdout=holdout,
        y=y,
        scores=_predict(X),
        entities=["carrier"],
        training={
            "train_days": "2013-01-01..2013-01-11 (11 days)",
            "holdout_days": "2013-01-12..2013-01-14 (3 days)",
            "rows_train": 9000,
            "rows_holdout": 600,
        },
    )
    assert [i["metric"] for i in card.intervals][:1] == ["roc_auc"] and card.interval("f1") is not None
    text = card.markdown("flights: model card")
    assert "2013-01-12..2013-01-14 (3 days) (600 rows)" in text and "| signal |" in text and "| carrier | B<B |" in text
    svg = card.importance_svg()
    assert svg.startswith("<svg") and "signal" in svg and "B&lt;B" not in svg and svg.count("<rect") == 2
