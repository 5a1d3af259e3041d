"""The compiled retrain policy on the real asset graph, over simulated days.

Materializations and check results are reported as events at simulated times (Dagster's clock is
frozen at each simulated moment), and the real conditions from ``mlops_assets.policies`` are
evaluated with ``evaluate_automation_conditions`` tick by tick, the way the automation sensor does.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.test_utils import freeze_time

T0 = datetime(2013, 3, 1, 6, tzinfo=UTC)
RETRAIN = ("training_set", "model", "champion")


class Simulation:
    """A real instance, the real definitions of one spec, and a clock we move by hand."""

    def __init__(self, spec, instance, defs):
        self.spec, self.instance, self.defs = spec, instance, defs
        self.cursor = None
        self.retrains: list[datetime] = []

    def key(self, stage: str) -> dg.AssetKey:
        return dg.AssetKey([self.spec.name, stage])

    def materialize(self, at: datetime, *stages: str, partition: str | None = None) -> None:
        with freeze_time(at):
            for stage in stages:
                self.instance.report_runless_asset_event(dg.AssetMaterialization(self.key(stage), partition=partition))

    def check(self, at: datetime, asset_stage: str, name: str, passed: bool, partition: str | None = None) -> None:
        with freeze_time(at):
            self.instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    asset_key=self.key(asset_stage),
                    check_name=name,
                    passed=passed,
                    metadata={},
                    severity=dg.AssetCheckSeverity.WARN if asset_stage == "predictions" else dg.AssetCheckSeverity.ERROR,
                    partition=partition,
                )
            )

    def tick(self, at: datetime, defs=None) -> set[str]:
        """One automation tick; requested retrain assets are 'run' (reported) right away."""
        with freeze_time(at):
            result = dg.evaluate_automation_conditions(
                defs=defs or self.defs, instance=self.instance, cursor=self.cursor, evaluation_time=at
            )
        self.cursor = result.cursor
        requested = {s for s in RETRAIN if result.get_num_requested(self.key(s))}
        if "model" in requested:
            assert {"training_set", "model"} <= requested  # always retrained on a fresh training set
            self.retrains.append(at)
            self.materialize(at + timedelta(minutes=5), *RETRAIN)
        return requested

    def day(self, n: int, *, drift: bool = False, underperforming: bool = False, failing: frozenset = frozenset()) -> datetime:
        """Day n: a new partition is scored and checked, then the sensor ticks."""
        from mlops_assets.policies import monitoring_checks

        at = T0 + timedelta(days=n)
        partition = (at - timedelta(days=1)).date().isoformat()
        self.materialize(at, "predictions", partition=partition)
        failing = set(failing) | ({"feature_drift"} if drift else set())
        failing |= {"performance"} if underperforming else set()
        for name in monitoring_checks(self.spec):
            self.check(at, "predictions", name, passed=name not in failing, partition=partition)
        if "model" in self.tick(at + timedelta(minutes=1)):
            self.tick(at + timedelta(minutes=10))  # the daemon keeps ticking after a retrain
        return at


@contextlib.contextmanager
def simulation(spec):
    """A fresh instance with the spec's first model trained just before T0."""
    from mlops_assets.factory import build_definitions

    with dg.instance_for_test() as instance:
        s = Simulation(spec, instance, build_definitions([spec]))
        s.tick(T0 - timedelta(hours=2))  # first evaluation: nothing is newly anything yet
        s.materialize(T0 - timedelta(hours=1), "feature_registry", *RETRAIN)  # the first model
        yield s


def with_check_policy(spec, section: str, retrain_when: str):
    p = spec.policies
    policy = getattr(p, section).model_copy(update={"retrain_when": retrain_when})
    return spec.model_copy(update={"policies": p.model_copy(update={section: policy})})


@pytest.fixture
def sim(tmp_path, monkeypatch, flight_spec):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    with simulation(flight_spec) as s:
        yield s


def test_no_retrain_while_nothing_drifts(sim):
    for n in range(1, 21):
        sim.day(n)
    assert sim.retrains == []


def test_exactly_one_retrain_after_injected_drift(sim):
    for n in range(1, 10):
        sim.day(n)
    drift_day = sim.day(10, drift=True)
    for n in range(11, 26):
        sim.day(n, drift=True)  # still drifting, past the cooldown: failing, but not newly
    assert sim.retrains == [drift_day + timedelta(minutes=1)]


@pytest.mark.parametrize("retrain_when", ["newly_failed", "failing"])
def test_failing_checks_of_the_endpoints_traffic_are_shown_never_a_retrain(tmp_path, monkeypatch, flight_spec, retrain_when):
    """flight_delays has a deployment: its served_ checks fail visibly (and alert) but retrain nothing,
    whether the policies act on a newly failing or a failing check; the same drift in the day's batch
    still retrains once."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    spec = with_check_policy(with_check_policy(flight_spec, "drift", retrain_when), "performance", retrain_when)
    served = frozenset({"served_feature_drift", "served_prediction_drift", "served_performance"})
    with simulation(spec) as sim:
        for n in range(1, 10):
            sim.day(n)
        for n in range(10, 20):
            sim.day(n, failing=served)
        assert sim.retrains == []
        drift_day = sim.day(20, drift=True)
        assert sim.retrains == [drift_day + timedelta(minutes=1)]


def test_no_retrain_inside_the_cooldown_then_one_when_it_ends(sim):
    assert sim.spec.policies.cooldown_days == 7
    for n in range(1, 3):
        sim.day(n)
    sim.day(3, drift=True)  # due, but the model is 3 days old
    for n in range(4, 12):
        sim.day(n)  # drift resolved on its own, the pending trigger is still owed once
    assert len(sim.retrains) == 1
    assert sim.retrains[0] >= T0 + timedelta(days=7)  # not before the cooldown ended
    assert sim.retrains[0] < T0 + timedelta(days=8, hours=1)


def test_failed_freshness_triggers_one_retrain(sim):
    assert sim.spec.policies.freshness.model_days == 30
    for n in range(1, 40):
        sim.day(n)
    assert len(sim.retrains) == 1
    assert T0 + timedelta(days=30) <= sim.retrains[0] < T0 + timedelta(days=31, hours=1)


def test_no_retrain_while_an_upstream_blocking_check_fails(sim):
    for n in range(1, 10):
        sim.day(n)
    at = T0 + timedelta(days=10)
    sim.check(at, "dataset", "ranges", passed=False, partition=(at - timedelta(days=1)).date().isoformat())
    sim.day(10, drift=True)
    sim.day(11)
    assert sim.retrains == []
    at = T0 + timedelta(days=12)
    sim.check(at, "dataset", "ranges", passed=True, partition=(at - timedelta(days=1)).date().isoformat())
    sim.day(12)
    assert len(sim.retrains) == 1  # the drift seen on day 10 is handled once the data is valid again


def test_a_new_code_version_triggers_a_retrain(sim, flight_spec):
    from mlops_assets.factory import build_definitions

    for n in range(1, 9):
        sim.day(n)
    assert sim.retrains == []
    edited = flight_spec.model_copy(update={"training": flight_spec.training.model_copy(update={"window_days": 21})})
    sim.defs = build_definitions([edited])
    sim.day(9)
    assert len(sim.retrains) == 1


@pytest.fixture
def level_sim(tmp_path, monkeypatch, flight_spec):
    """The flight spec with ``performance.retrain_when: failing`` (Elec2's policy)."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    with simulation(with_check_policy(flight_spec, "performance", "failing")) as s:
        yield s


def test_a_failing_performance_check_retrains_once_per_cooldown_while_it_fails(level_sim):
    """A rejected challenger leaves the failing champion serving: the retrain is repeated as soon as
    the cooldown allows (on the 7th day's tick, not the 8th), and stops once the check passes."""
    assert level_sim.spec.policies.cooldown_days == 7
    for n in range(1, 10):
        level_sim.day(n)
    for n in range(10, 25):
        level_sim.day(n, underperforming=True)
    for n in range(25, 30):
        level_sim.day(n)
    assert [(r - T0).days for r in level_sim.retrains] == [10, 17, 24]


def test_a_performance_failure_that_clears_inside_the_cooldown_retrains_nothing(level_sim):
    """Not latched: a failing *level* only counts while it holds."""
    for n in range(1, 4):
        level_sim.day(n)
    level_sim.day(4, underperforming=True)  # the model is 4 days old: inside the cooldown
    for n in range(5, 12):
        level_sim.day(n)
    assert level_sim.retrains == []


def test_a_drift_check_set_to_never_does_not_retrain(tmp_path, monkeypatch, flight_spec):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    with simulation(with_check_policy(flight_spec, "drift", "never")) as s:
        for n in range(1, 10):
            s.day(n)
        for n in range(10, 15):
            s.day(n, drift=True)
        assert s.retrains == []


def test_every_monitoring_check_has_a_retrain_policy():
    from mlops_assets.policies import CHECK_POLICY
    from mlops_assets.scoring import MONITORING_CHECKS

    assert set(CHECK_POLICY) == set(MONITORING_CHECKS)


def _run_event(instance, run, event_type) -> None:
    """Report a run's lifecycle event the way its run worker does (the instance moves the run's status)."""
    from dagster._core.events import DagsterEvent

    instance.report_dagster_event(DagsterEvent(event_type.value, job_name=run.job_name), run.run_id)


def test_never_retrains_while_a_run_of_the_retrain_chain_is_in_progress(sim):
    """A real run of training set + model + gate on the instance (created for the real asset job, so
    its planned materializations are recorded, and started): drift that makes a retrain due requests
    nothing while that run is in progress, on every tick, and the retrain still owed is requested
    once the run has ended without materializing."""
    from dagster._core.events import DagsterEventType

    for n in range(1, 9):
        sim.day(n)
    job = sim.defs.resolve_implicit_global_asset_job_def()
    run = sim.instance.create_run_for_job(job_def=job, asset_selection=frozenset(sim.key(s) for s in RETRAIN))
    _run_event(sim.instance, run, DagsterEventType.RUN_START)
    assert sim.instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    drift_day = sim.day(9, drift=True)  # due: newly failing drift, past the cooldown
    assert sim.retrains == []
    for n in range(10, 13):  # still running: the pending trigger waits
        sim.day(n, drift=True)
    assert sim.retrains == []

    _run_event(sim.instance, run, DagsterEventType.RUN_FAILURE)  # it ended, nothing retrained
    assert sim.instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    sim.day(13, drift=True)
    assert len(sim.retrains) == 1 and sim.retrains[0] > drift_day
    for n in range(14, 18):
        sim.day(n, drift=True)
    assert len(sim.retrains) == 1  # once, not on every tick after
