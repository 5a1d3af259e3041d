"""The online store never goes back in time (issue 14, point 5).

Real runs of the ingest job on a temporary home (Feast SQLite online store), then the same offline
sources materialized into a real Redis: re-materializing an older day (a relanded file, or a day
re-run because its labels arrived late) leaves the newer values in place, a re-run of the newest day
replaces its values, and a genuinely newer day still moves the store forward.
"""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from mlops_assets_tests.conftest import platform

DAY1, DAY2, DAY3 = "2013-01-01", "2013-01-02", "2013-01-03"
RATE = "carrier_delay_rate"


def online(feast, spec, view: str, feature: str, entity: str, keys: list[str]) -> dict[str, float | None]:
    """What the online store answers for ``keys`` of one entity, as the server asks it."""
    got = feast.store(spec).get_online_features(features=[f"{view}:{feature}"], entity_rows=[{entity: k} for k in keys]).to_dict()
    return dict(zip(got[entity], got[feature], strict=True))


def rates(lake, day: str) -> dict[str, float]:
    table = lake.read_feature_day("flight_delays", RATE, day)
    return dict(zip(table["carrier"], table[RATE], strict=True))


def next_rates(lake, spec, day: str) -> dict[str, float]:
    """The rates of the day after ``day``, from the landed days up to it: what the ingest of ``day``
    writes online, so a request during the next day gets them (``online_features``)."""
    from mlops_assets.core.features import past_rate_table

    history = lake.read_days("dataset", "flight_delays", [k for k in lake.partitions("dataset", "flight_delays") if k <= day])
    feature = next(f for f in spec.past_rate_features if f.name == RATE)
    following = date.fromisoformat(day) + timedelta(days=1)
    table = past_rate_table(history, history.iloc[0:0], feature, following, spec.source.timestamp.timezone)
    return dict(zip(table["carrier"], table[RATE], strict=True))


def latest_weather(lake, day: str, tz: str = "America/New_York") -> dict[str, float]:
    """Per origin, the temperature of the day's last observation (what materializing the day loads)."""
    from mlops_assets.core.names import EVENT_TS
    from mlops_assets.core.sources import day_start_utc

    table = lake.read(lake.lookup_snapshot_path("flight_delays", "weather"))
    d = date.fromisoformat(day)
    window = table[(table[EVENT_TS] >= day_start_utc(d, tz)) & (table[EVENT_TS] < day_start_utc(d + timedelta(days=1), tz))]
    last = window.sort_values(EVENT_TS).groupby("origin").tail(1)
    return dict(zip(last["origin"], last["temp"], strict=True))


@pytest.fixture(scope="module")
def home(tmp_path_factory, flight_spec):
    home = tmp_path_factory.mktemp("online_order_home")
    with platform(home, [flight_spec]) as p:
        p.land("flight_delays", date(2013, 1, 1), 3)
        assert p.run("register", "flight_delays").success
        for day in (DAY1, DAY2):
            assert p.run("ingest", "flight_delays", day).success
        yield p


def test_sqlite_online_store_keeps_newer_days_through_relands_and_late_labels(home, flight_spec):
    lake, feast = home.resources()["lake"], home.resources()["feast"]
    # after day 2, the online rates are those a request of day 3 needs (from days 1 and 2)
    carriers = sorted(next_rates(lake, flight_spec, DAY2))
    origins = ["EWR", "JFK", "LGA"]
    day2 = online(feast, flight_spec, RATE, RATE, "carrier", carriers)
    assert day2 == pytest.approx(next_rates(lake, flight_spec, DAY2))
    assert rates(lake, DAY1) != rates(lake, DAY2)  # day 1 has no history: the two days differ
    weather2 = online(feast, flight_spec, "lookup_weather", "temp", "origin", origins)
    assert weather2 == pytest.approx(latest_weather(lake, DAY2))

    # day 1 relanded unchanged (the same file dropped again) and re-run
    assert home.run("ingest", "flight_delays", DAY1).success
    assert online(feast, flight_spec, RATE, RATE, "carrier", carriers) == day2
    assert online(feast, flight_spec, "lookup_weather", "temp", "origin", origins) == weather2
    assert home.latest("flight_delays/online_features")["rows_kept_newer"] > 0  # and the run says so

    # day 1's labels arrive later (different delays): its features and online step run again
    landing = home.home / "landing" / "flight_delays" / f"{DAY1}.csv"
    df = pd.read_csv(landing, dtype=str)
    df["dep_delay"] = "60"
    df.to_csv(landing, index=False)
    assert home.run("ingest", "flight_delays", DAY1).success
    assert online(feast, flight_spec, RATE, RATE, "carrier", carriers) == day2
    assert online(feast, flight_spec, "lookup_weather", "temp", "origin", origins) == weather2

    # a genuinely newer day moves the store forward; its rates now see day 1's late labels
    assert home.run("ingest", "flight_delays", DAY3).success
    day3 = online(feast, flight_spec, RATE, RATE, "carrier", sorted(next_rates(lake, flight_spec, DAY3)))
    assert day3 == pytest.approx(next_rates(lake, flight_spec, DAY3)) and day3 != {c: day2.get(c) for c in day3}
    assert online(feast, flight_spec, "lookup_weather", "temp", "origin", origins) == pytest.approx(latest_weather(lake, DAY3))

    # the newest day re-run (day 2's labels came late too) replaces its own values: same instant, newer data
    landing = home.home / "landing" / "flight_delays" / f"{DAY2}.csv"
    df = pd.read_csv(landing, dtype=str)
    df["dep_delay"] = "-5"
    df.to_csv(landing, index=False)
    assert home.run("ingest", "flight_delays", DAY2).success
    assert home.run("ingest", "flight_delays", DAY3).success
    rerun = online(feast, flight_spec, RATE, RATE, "carrier", sorted(next_rates(lake, flight_spec, DAY3)))
    assert rerun == pytest.approx(next_rates(lake, flight_spec, DAY3)) and rerun != day3


def test_redis_online_store_keeps_newer_days_and_takes_a_rerun_of_the_newest(home, flight_spec, redis, tmp_path):
    """The same rule on a real Redis: Feast's own Redis check skips equal instants, so a re-run of the
    newest day with corrected values would never reach it; ours writes it, and still refuses older days."""
    from mlops_assets.core.sources import day_start_utc
    from mlops_assets.resources import FeastFeatureStore

    lake = home.resources()["lake"]
    if lake.read_feature_day("flight_delays", RATE, DAY3) is None:  # when this test runs alone
        assert home.run("ingest", "flight_delays", DAY3).success
    spec = flight_spec.model_copy(update={"name": "flight_delays_order"})  # its own Feast project in the shared Redis
    feast = FeastFeatureStore(
        registry=str(tmp_path / "registry.db"), online_store_type="redis", redis_connection=redis.connection_string
    )
    feast.apply(spec, lake.features_root("flight_delays"))
    tz = spec.source.timestamp.timezone

    def materialize(day: str) -> dict[str, int]:
        d = date.fromisoformat(day)
        end = day_start_utc(d + timedelta(days=1), tz) - pd.Timedelta(microseconds=1)
        return feast.materialize(spec, day_start_utc(d, tz).to_pydatetime(), end.to_pydatetime())

    carriers = sorted(rates(lake, DAY2))
    assert materialize(DAY2)[RATE] == 0
    day2 = online(feast, spec, RATE, RATE, "carrier", carriers)
    assert day2 == pytest.approx(rates(lake, DAY2))

    skipped = materialize(DAY1)
    assert online(feast, spec, RATE, RATE, "carrier", carriers) == day2
    assert skipped[RATE] > 0 and skipped["lookup_weather"] == 3  # every carrier and airport kept day 2

    assert materialize(DAY3)[RATE] == 0
    day3 = rates(lake, DAY3)
    assert online(feast, spec, RATE, RATE, "carrier", sorted(day3)) == pytest.approx(day3)

    corrected = lake.read_feature_day("flight_delays", RATE, DAY3).assign(**{RATE: lambda t: t[RATE] / 2})
    lake.write_feature_day("flight_delays", RATE, DAY3, corrected)
    materialize(DAY3)
    assert online(feast, spec, RATE, RATE, "carrier", sorted(day3)) == pytest.approx({c: v / 2 for c, v in day3.items()})
