"""The server's decisions without a server: request parsing, the numpy fast path, the canary
judgement and the deployment plan. Real Elec2 rows and real fitted pipelines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from mlops_assets.core.requests import RequestError, parse_request, request_schema
from mlops_assets.core.rollout import Deployment, SideStats, judge_canary, plan_deployment
from mlops_assets.core.serving import Predictor
from mlops_assets.specs import CanarySpec
from mlops_assets_tests.conftest import DATA_DIR

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
POLICY = CanarySpec(traffic_percent=10, window_minutes=60, min_requests=100, min_labelled=50).model_dump()


@pytest.fixture(scope="module")
def elec2_frame():
    df = pd.read_csv(DATA_DIR / "elec2" / "elec2_with_timestamp.csv").iloc[:4000]
    df["day"] = df["day"].astype(str)
    df["label"] = (df["class"] == "UP").astype(int)
    return df


@pytest.mark.parametrize("encoding", ["ordinal", "onehot"])
def test_fast_path_reproduces_the_pipeline_or_steps_aside(elec2_spec, elec2_frame, encoding):
    """Ordinal pipelines are scored in numpy with exactly the pipeline's scores, unseen categories and
    missing values included; a pipeline it does not know (one-hot) is scored by the pipeline itself."""
    from mlops_assets.core.training import feature_frame, fit

    spec = elec2_spec.model_copy(update={"estimator": elec2_spec.estimator.model_copy(update={"categorical_encoding": encoding})})
    model = fit(spec, elec2_frame.iloc[:2000])
    predictor = Predictor(model, spec)
    assert predictor.fast == (encoding == "ordinal")
    X = feature_frame(elec2_frame.iloc[2000:], spec)
    X.loc[X.index[:50], "nswprice"] = np.nan
    X.loc[X.index[50:60], "day"] = "8"  # a weekday the model never saw
    columns = {c: X[c].to_numpy() for c in X.columns}
    np.testing.assert_array_equal(predictor.scores(columns), model.predict_proba(X)[:, 1])


def test_requests_are_parsed_into_typed_columns(elec2_spec):
    schema = request_schema(elec2_spec)
    assert set(schema.required) == {"day", "period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer"}
    assert schema.required["day"] == "string" and schema.required["nswprice"] == "number"
    row = {"day": 3, "period": 0.5, "nswprice": None, "nswdemand": 0.4, "vicprice": 0, "vicdemand": 0.4, "transfer": 0.4}
    parsed = parse_request({"instances": [row, {**row, "day": "7", "event_id": "e2"}]}, schema, elec2_spec)
    assert parsed.rows == 2 and parsed.columns["day"] == ["3", "7"]
    assert np.isnan(parsed.columns["nswprice"]).all() and parsed.columns["vicprice"].dtype == np.float64
    assert parsed.event_ids == [None, "e2"]


def test_every_bad_field_is_reported_with_its_location(elec2_spec):
    schema = request_schema(elec2_spec)
    row = {"day": 3, "period": "noon", "nswprice": float("inf"), "nswdemand": True, "vicprice": 0, "vicdemand": 0.4}
    with pytest.raises(RequestError) as err:
        parse_request({"instances": [row]}, schema, elec2_spec)
    locs = {tuple(e["loc"]): e["msg"] for e in err.value.errors}
    assert locs[("instances", 0, "transfer")].startswith("field required")
    assert "finite" in locs[("instances", 0, "nswprice")]
    assert "number" in locs[("instances", 0, "period")] and "number" in locs[("instances", 0, "nswdemand")]
    assert err.value.status == 422


def test_flight_requests_carry_entities_and_time(flight_spec):
    schema = request_schema(flight_spec)
    assert {"carrier", "origin", "dest", "tailnum", "distance"} == set(schema.required)
    assert {"carrier_delay_rate", "temp", "plane_year"} <= set(schema.online_features)
    row = {"carrier": "UA", "origin": "EWR", "dest": "IAH", "tailnum": "N14228", "distance": 1400.0}
    parsed = parse_request({"instances": [{**row, "event_timestamp": "2013-01-05T06:15"}]}, schema, flight_spec)
    assert parsed.timestamps[0] == pd.Timestamp("2013-01-05T06:15", tz="America/New_York")  # naive = spec timezone


FLIGHT = {"carrier": "UA", "origin": "EWR", "dest": "IAH", "tailnum": "N14228", "distance": 1400.0}


def refusal(spec, payload, now=NOW) -> dict[tuple, str]:
    """The errors of a refused request, loc -> message; fails the test if it is accepted or if
    anything but a RequestError comes out."""
    with pytest.raises(RequestError) as err:
        parse_request(payload, request_schema(spec), spec, now=now)
    assert 400 <= err.value.status < 500
    return {tuple(e["loc"]): e["msg"] for e in err.value.errors}


@pytest.mark.parametrize(
    "stamp",
    ["", "now", "yesterday", "14/01/2013", "2013-13-01T09:00", "2013-01-14T25:00", "0001-01-01T00:00", "2262-04-12T00:00",
     "3000-01-01", "9999-12-31T23:59:59", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00+23:59", 1357552800, 1.5e9,
     True, ["2013-01-14"], {"t": "2013-01-14"}],
)  # fmt: skip
def test_event_times_are_iso_8601_within_the_horizon_or_refused(flight_spec, stamp):
    """Loose text, epoch numbers, years pandas cannot hold and anything outside the spec's
    partitions widened by the margin are refused, naming the field and what is accepted."""
    locs = refusal(
        flight_spec, {"instances": [{**FLIGHT, "event_timestamp": "2013-02-01T08:00"}, {**FLIGHT, "event_timestamp": stamp}]}
    )
    assert list(locs) == [("instances", 1, "event_timestamp")]
    msg = locs[("instances", 1, "event_timestamp")]
    assert "ISO 8601" in msg or "horizon" in msg


def test_the_horizon_is_the_partitions_widened_by_the_margin(flight_spec):
    schema = request_schema(flight_spec)
    margin = flight_spec.deployment.event_time_margin_days
    inside = ["2013-01-01T00:00", "2012-12-05", "2014-01-25T23:00", "2013-06-30T12:00:00Z", "2013-06-30 12:00:00+02:00"]
    parsed = parse_request(
        {"inputs": {**{k: [v] * 5 for k, v in FLIGHT.items()}, "event_timestamp": inside}}, schema, flight_spec
    )
    assert parsed.timestamps[3] == pd.Timestamp("2013-06-30T12:00", tz="UTC")
    assert parsed.timestamps[4] == pd.Timestamp("2013-06-30T10:00", tz="UTC")
    late = (pd.Timestamp(flight_spec.partitions.end) + pd.Timedelta(days=margin + 1)).date().isoformat()
    assert (
        "horizon"
        in refusal(flight_spec, {"instances": [{**FLIGHT, "event_timestamp": late}]})[("instances", 0, "event_timestamp")]
    )
    # no time given means now, which a spec of 2013 cannot file: the caller must say when
    msg = refusal(flight_spec, {"instances": [FLIGHT]})[("instances", 0, "event_timestamp")]
    assert msg.startswith("field required") and "horizon" in msg


def test_naive_times_follow_the_ingest_rule_across_daylight_saving(flight_spec):
    """The hour skipped in spring moves forward and the repeated hour in autumn is the first one,
    exactly as core.sources.event_timestamps types the landed files."""
    from mlops_assets.core.sources import event_timestamps

    stamps = ["2013-03-10T02:30", "2013-11-03T01:30", "2013-07-01T09:00"]
    parsed = parse_request(
        {"instances": [{**FLIGHT, "event_timestamp": t} for t in stamps]}, request_schema(flight_spec), flight_spec
    )
    ingested = event_timestamps(pd.DataFrame({"t": stamps}), "t", None, "America/New_York", "test")
    assert list(parsed.timestamps) == list(ingested)


@pytest.mark.parametrize(
    "value, words",
    [(float("nan"), "finite"), (float("inf"), "finite"), (1e308, "magnitude"), (-1e16, "magnitude"), (10**400, "magnitude"),
     (True, "number"), ("12", "number"), ([1.0], "array"), ({"a": 1}, "object"), (0.5, "range"), (7000, "range")],
)  # fmt: skip
def test_numbers_are_finite_bounded_and_inside_the_spec_ranges(flight_spec, value, words):
    """distance has checks.ranges [1, 6000] in the flight spec: the parser refuses what the dataset
    check would have kept out of training."""
    locs = refusal(flight_spec, {"instances": [{**FLIGHT, "distance": value, "event_timestamp": "2013-02-01T08:00"}]})
    assert words in locs[("instances", 0, "distance")]


def test_deeply_nested_values_are_refused_without_recursion(flight_spec):
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    locs = refusal(flight_spec, {"instances": [{**FLIGHT, "carrier": deep, "distance": deep, "event_timestamp": deep}]})
    assert set(locs) == {("instances", 0, "carrier"), ("instances", 0, "distance"), ("instances", 0, "event_timestamp")}
    assert all(len(m) < 300 for m in locs.values())


def test_null_is_the_training_missing_value_for_every_field(flight_spec, elec2_spec):
    """Training types a missing text value as "" (the empty category) and a missing number as NaN;
    a request's null is the same, entity keys included (a missing tail number is the "" entity)."""
    from mlops_assets.core.features import MISSING_CATEGORY

    row = {**FLIGHT, "tailnum": None, "carrier": None, "distance": None, "event_timestamp": "2013-02-01T08:00"}
    parsed = parse_request({"instances": [row]}, request_schema(flight_spec), flight_spec)
    assert parsed.columns["tailnum"] == [MISSING_CATEGORY] and parsed.columns["carrier"] == [MISSING_CATEGORY]
    assert np.isnan(parsed.columns["distance"][0])
    elec = {"day": None, "period": 0.5, "nswprice": None, "nswdemand": 0.4, "vicprice": 0, "vicdemand": 0.4, "transfer": 0.4}
    parsed = parse_request({"instances": [elec]}, request_schema(elec2_spec), elec2_spec)
    assert parsed.columns["day"] == [MISSING_CATEGORY]


def test_text_is_bounded_and_never_a_container(flight_spec):
    locs = refusal(
        flight_spec,
        {"instances": [{**FLIGHT, "carrier": "X" * 5000, "origin": {"a": 1}, "dest": 3.5, "event_timestamp": "2013-02-01"}]},
    )
    assert "5000 characters" in locs[("instances", 0, "carrier")]
    assert "object" in locs[("instances", 0, "origin")] and "3.5" in locs[("instances", 0, "dest")]


def test_the_published_json_schema_matches_the_parser(flight_spec):
    """The request schema a client can generate requests from: both shapes, the required fields,
    the spec's ranges."""
    schema = request_schema(flight_spec)
    published = schema.json_schema()
    rows, columns = published["oneOf"]
    row = rows["properties"]["instances"]["items"]
    assert set(row["required"]) == set(schema.required) and row["properties"]["distance"]["maximum"] == 6000
    assert set(columns["properties"]["inputs"]["properties"]) == set(schema.fields)
    assert schema.describe()["ranges"] == {"distance": [1, 6000]}


def side(version: str, requests: int, errors: int = 0, p99: float = 2.0, metric: float | None = None, labelled: int = 0):
    return SideStats(version, requests, errors, p99, metric, labelled)


def judge(stable, canary, minutes: float = 90):
    return judge_canary(
        stable, canary, started=NOW - timedelta(minutes=minutes), now=NOW, policy=POLICY, metric="accuracy", higher_is_better=True
    )


def test_canary_waits_for_its_window_and_its_requests():
    assert judge(side("1", 1000), side("2", 150), minutes=30).decision == "wait"
    assert judge(side("1", 1000), side("2", 40)).decision == "wait"
    assert judge(side("1", 1000), side("2", 150)).decision == "promote"


@pytest.mark.parametrize(
    ("canary", "why"),
    [
        (side("2", 200, errors=10), "error rate"),
        (side("2", 200, p99=30.0), "p99 latency"),
        (side("2", 200, metric=0.70, labelled=80), "accuracy"),
    ],
)
def test_canary_regressions_roll_back(canary, why):
    verdict = judge(side("1", 2000, errors=2, p99=4.0, metric=0.78, labelled=800), canary)
    assert verdict.decision == "rollback" and why in verdict.reasons[0]


def accuracy(y, scores):
    return float(((scores >= 0.5) == (y == 1)).mean())


def labelled_side(version: str, n: int, right: float, seed: int) -> SideStats:
    """``n`` labelled predictions, each right with probability ``right`` (a model of that accuracy)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    hit = rng.random(n) < right
    scores = np.where(hit, y, 1 - y) * 0.8 + 0.1
    return SideStats(version, max(n, 1000), 0, 2.0, accuracy(y, scores), n, (y, scores))


def judge_rows(stable: SideStats, canary: SideStats, confidence: float | None):
    policy = {**POLICY, "max_metric_drop": 0.02, "metric_confidence": confidence}
    return judge_canary(
        stable,
        canary,
        started=NOW - timedelta(minutes=90),
        now=NOW,
        policy=policy,
        metric="accuracy",
        higher_is_better=True,
        metric_fn=accuracy,
    )


def test_a_canary_metric_rolls_back_on_evidence_not_on_the_noise_of_a_few_hundred_rows():
    """A canary of 200 labelled predictions beside 2,000 stable ones, each side's rows its own: a
    clear regression (0.55 against 0.78) rolls back with its interval in the reason; a canary as
    good as the stable one is rolled back by the bare comparison about a third of the time (its
    accuracy scatters by 0.03 against a 0.02 drop) and by the evidence at 90 % rarely."""
    stable = labelled_side("1", 2000, 0.78, seed=1)
    worse = judge_rows(stable, labelled_side("2", 200, 0.55, seed=2), confidence=0.9)
    assert (
        worse.decision == "rollback" and "90% interval" in worse.reasons[0] and "against 'at most 0.02 worse'" in worse.reasons[0]
    )
    bare = evidence = 0
    trials = 120
    for seed in range(trials):
        equal = labelled_side("2", 200, 0.78, seed=100 + seed)
        bare += judge_rows(stable, equal, confidence=None).decision == "rollback"
        evidence += judge_rows(stable, equal, confidence=0.9).decision == "rollback"
    assert bare / trials > 0.2 and evidence / trials < 0.08, (bare, evidence)


def timed_side(version: str, n: int, seed: int, pauses: float = 0.0, slower: float = 1.0) -> SideStats:
    """``n`` answered requests of a server taking ~8 ms (lognormal), ``slower`` times that, and on
    average ``pauses`` per 220 requests caught by a pause of the host (30-80 ms)."""
    from mlops_assets.core.rollout import p99

    rng = np.random.default_rng(seed)
    lat = rng.lognormal(np.log(8.0), 0.35, n) * slower
    hit = rng.random(n) < pauses / 220
    lat[hit] = rng.uniform(30, 80, int(hit.sum()))
    return SideStats(version, n, 0, p99(lat), latencies=lat)


def test_a_canary_latency_rolls_back_on_evidence_not_on_a_pause_of_the_host():
    """The p99 of a canary's 220 requests is its two or three slowest: a few requests caught by a
    pause of the host (1.5 per 220 on average, on both sides alike) push it past the limit, so the
    bare comparison rolls back versions as fast as the stable one; with the evidence at 90 % that
    happens rarely, and a canary slower across its requests still rolls back, its interval in the
    reason."""
    stable = timed_side("1", 2000, seed=1, pauses=1.5)
    policy = {**POLICY, "metric_confidence": None}
    bare_policy = {**policy, "latency_confidence": None}

    def verdict(canary, p):
        return judge_canary(
            stable, canary, started=NOW - timedelta(minutes=90), now=NOW, policy=p, metric="accuracy", higher_is_better=True
        )

    slow = verdict(timed_side("2", 220, seed=2, pauses=1.5, slower=3.0), policy)
    assert slow.decision == "rollback" and "p99 latency" in slow.reasons[0] and "90% interval of the excess" in slow.reasons[0]
    bare = evidence = 0
    trials = 120
    for seed in range(trials):
        same = timed_side("2", 220, seed=100 + seed, pauses=1.5)
        bare += verdict(same, bare_policy).decision == "rollback"
        evidence += verdict(same, policy).decision == "rollback"
    assert bare / trials > 0.1 and evidence / trials < 0.03, (bare, evidence)


def test_metric_is_judged_only_with_enough_labels():
    verdict = judge(side("1", 2000, metric=0.78, labelled=800), side("2", 200, metric=0.50, labelled=20))
    assert verdict.decision == "promote"
    assert any("needs 50 labelled" in str(r["limit"]) for r in verdict.table)


def test_deployment_plan_follows_the_champion_and_the_verdict():
    promote = judge(side("1", 1000), side("2", 150))
    rollback = judge(side("1", 1000), side("2", 150, errors=50))
    first = plan_deployment(None, "1", canary_percent=10, now=NOW)
    assert (first.action, first.deployment) == ("deploy", Deployment(stable="1"))
    assert plan_deployment(first.deployment, "1", canary_percent=10, now=NOW).action == "unchanged"
    started = plan_deployment(first.deployment, "2", canary_percent=10, now=NOW)
    assert started.action == "canary_started" and started.deployment == Deployment("1", "2", 10, NOW.isoformat())
    assert plan_deployment(started.deployment, "2", canary_percent=10, now=NOW).action == "canary_waiting"
    assert plan_deployment(started.deployment, "2", canary_percent=10, now=NOW, verdict=promote).deployment == Deployment("2")
    back = plan_deployment(started.deployment, "2", canary_percent=10, now=NOW, verdict=rollback)
    assert (back.action, back.deployment) == ("rolled_back", Deployment("1"))
    restarted = plan_deployment(started.deployment, "3", canary_percent=10, now=NOW)
    assert restarted.action == "canary_restarted" and restarted.deployment.canary == "3"
    direct = plan_deployment(first.deployment, "2", canary_percent=0, now=NOW)
    assert (direct.action, direct.deployment) == ("deploy", Deployment("2"))
    with pytest.raises(ValueError, match="canary share needs a canary version"):
        Deployment("1", None, 10)


def test_an_unknown_entity_is_told_apart_on_both_online_stores():
    """SQLite says NOT_FOUND; Redis answers present with event time 0, which no stored row has
    (static lookup rows are stamped one second after the epoch)."""
    from mlops_assets.core.features import STATIC_TIMESTAMP
    from mlops_assets.core.serving import FEAST_NOT_FOUND, feast_unknown_mask

    present, null_value = 1, 2
    assert feast_unknown_mask([present, FEAST_NOT_FOUND, null_value]).tolist() == [False, True, False]
    redis = feast_unknown_mask([present, present, present], timestamps=[1357016400, 0, int(STATIC_TIMESTAMP.timestamp())])
    assert redis.tolist() == [False, True, False]


def test_a_past_rate_table_carries_its_prior_under_the_reserved_key():
    """The prior row is keyed PRIOR_KEY in every column of ``by``, holds the window's label mean
    (what a group first seen today gets), count 0 and the day's stamp; with no history it is
    missing, exactly like the rate training gives a group then."""
    from datetime import date

    from mlops_assets.core.features import PRIOR_KEY, past_rate, past_rate_table
    from mlops_assets.specs import PastRateFeature

    def events(rows):
        return pd.DataFrame(
            {
                "event_timestamp": pd.to_datetime([r[0] for r in rows]).tz_localize("UTC"),
                "origin": [r[1] for r in rows],
                "dest": [r[2] for r in rows],
                "label": [float(r[3]) for r in rows],
            }
        )

    feature = PastRateFeature(kind="past_rate", name="route_rate", by=["origin", "dest"], window_days=7, prior_weight=2.0)
    history = events(
        [("2013-01-08 12:00", "EWR", "IAH", 1), ("2013-01-09 12:00", "JFK", "LAX", 0), ("2013-01-09 13:00", "JFK", "LAX", 0)]
    )
    today = events([("2013-01-10 15:00", "LGA", "ORD", 1)])
    day = date(2013, 1, 10)
    table = past_rate_table(history, today, feature, day, "America/New_York")
    plain = past_rate(history, today, feature, day, "America/New_York")
    pd.testing.assert_frame_equal(table.iloc[:-1], plain)
    prior = table.iloc[-1]
    assert (prior["origin"], prior["dest"]) == (PRIOR_KEY, PRIOR_KEY) and prior["route_rate_count"] == 0.0
    assert prior["route_rate"] == pytest.approx(1 / 3) == plain.set_index("dest").loc["ORD", "route_rate"]
    assert prior["event_timestamp"] == plain["event_timestamp"].iloc[0] and table.dtypes.equals(plain.dtypes)
    empty = past_rate_table(history.iloc[0:0], today, feature, day, "America/New_York")
    assert np.isnan(empty.iloc[-1]["route_rate"]) and np.isnan(empty.iloc[0]["route_rate"])
