"""Dagster's (and ibis's, Feast's) private APIs are used through ``mlops_assets.compat`` only, and an
upgrade that moves one of them fails here, naming it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mlops_assets

PACKAGE = Path(mlops_assets.__file__).parent
COMPAT = PACKAGE / "compat"


def _import_nodes(paths: list[Path]) -> dict[Path, list[ast.stmt]]:
    """The import statements of each file, parsed by ``ast.parse`` in one fresh interpreter.

    CPython 3.11's AST validator keeps a recursion counter that an earlier RecursionError in the
    same process (a test feeding deeply nested JSON to the server) can leave off by a few levels;
    ``ast.parse`` then fails with "AST constructor recursion depth mismatch". A fresh process has
    no such history."""
    probe = (
        "import ast, json, sys\n"
        "out = {}\n"
        "for f in sys.argv[1:]:\n"
        "    tree = ast.parse(open(f).read(), filename=f)\n"
        "    out[f] = [[type(n).__name__, n.lineno, getattr(n, 'module', None), [a.name for a in n.names]]\n"
        "              for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *map(str, paths)], capture_output=True, text=True, timeout=120, check=True)
    nodes: dict[Path, list[ast.stmt]] = {}
    for f, found in json.loads(out.stdout).items():
        nodes[Path(f)] = []
        for kind, lineno, module, names in found:
            aliases = [ast.alias(name=n) for n in names]
            node = ast.ImportFrom(module=module, names=aliases, level=0) if kind == "ImportFrom" else ast.Import(names=aliases)
            node.lineno = lineno
            nodes[Path(f)].append(node)
    return nodes


def test_every_private_api_the_platform_uses_still_exists(monkeypatch):
    from mlops_assets import compat

    missing = compat.missing_private_apis()
    assert not missing, f"a library upgrade removed or moved: {missing} (see mlops_assets/compat/)"
    # the check is live: a name that is gone is reported by its full path
    monkeypatch.setattr(compat, "PRIVATE_APIS", (*compat.PRIVATE_APIS, ("dagster._core.test_utils", "no_such_helper")))
    assert compat.missing_private_apis() == ["dagster._core.test_utils.no_such_helper"]


def test_no_module_but_compat_imports_dagster_internals():
    """An import of ``dagster._…`` anywhere else is a private API outside the inventory."""
    offenders = []
    paths = [p for p in sorted(PACKAGE.rglob("*.py")) if p.parent != COMPAT]
    for path, nodes in _import_nodes(paths).items():
        for node in nodes:
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            offenders += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {m}" for m in modules if m.startswith("dagster._")]
    assert not offenders, offenders


def test_the_inventory_lists_every_private_dagster_import_of_compat():
    """compat's own ``dagster._`` imports (all its modules) are in ``PRIVATE_APIS``, so the first test
    covers them."""
    from mlops_assets.compat import PRIVATE_APIS

    listed = {(module, path.split(".")[0]) for module, path in PRIVATE_APIS}
    nodes = _import_nodes(sorted(COMPAT.glob("*.py")))
    source = ast.Module(body=[n for found in nodes.values() for n in found], type_ignores=[])
    imported = {
        (node.module, alias.name)
        for node in ast.walk(source)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dagster._")
        for alias in node.names
    }
    assert imported and imported <= listed, imported - listed


def test_names_are_built_in_one_module(elec2_spec):
    """The definitions' assets, jobs and sensors carry the names ``core.names`` builds."""
    from mlops_assets.core import names
    from mlops_assets.factory import build_definitions

    defs = build_definitions([elec2_spec])
    jobs = {j.name for j in defs.jobs if not j.name.startswith("__")}
    assert {names.job_name(k, elec2_spec) for k in ("register", "ingest", "train", "score")} <= jobs
    sensors = {s.name for s in defs.sensors}
    assert {names.sensor_name("landing", elec2_spec), names.AUTOMATION_SENSOR} <= sensors
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {names.asset_name(s, elec2_spec) for s in ("raw", "dataset", "model", "champion", "predictions")} <= keys


def test_a_skipped_check_after_a_failure_reads_as_not_failing():
    """``latest_check_failure`` (read by the ``CheckFailing`` automation conditions) on real runs of a
    one-asset multi-asset like ``<spec>/predictions``: a check that fails, then one run in which it could
    not judge (no result: Dagster resolves it to skipped), then one in which it passes. The skipped run
    clears the failure, as a not-judged verdict did when it was reported as a pass: a policy acts on the
    newest verdict, and a day with nothing to judge is no evidence that the model still fails."""
    import dagster as dg

    from mlops_assets.compat import latest_check_failure

    verdicts = iter([False, None, True])

    @dg.multi_asset(specs=[dg.AssetSpec("scored")], check_specs=[dg.AssetCheckSpec("drift", asset="scored")], can_subset=True)
    def scored():
        passed = next(verdicts)
        yield dg.MaterializeResult(
            asset_key="scored",
            check_results=[] if passed is None else [dg.AssetCheckResult(check_name="drift", passed=passed)],
        )

    check = dg.AssetCheckKey(dg.AssetKey("scored"), "drift")
    with dg.instance_for_test() as instance:
        assert latest_check_failure(instance, check) is None  # never ran
        assert dg.materialize([scored], instance=instance).success
        assert latest_check_failure(instance, check) is not None
        assert dg.materialize([scored], instance=instance).success  # the check is skipped, the step succeeds
        assert latest_check_failure(instance, check) is None
        assert dg.materialize([scored], instance=instance).success
        assert latest_check_failure(instance, check) is None


def test_definitions_load_under_their_instance_whatever_a_gone_instance_left_current(flight_spec):
    """Entering a Dagster instance makes its definitions-state storage the current one, and leaving
    restores the one before. A process that entered instances in other contexts can be left naming
    the storage of an instance that is gone; loading definitions then failed ("Attempted to resolve
    undefined DagsterInstance weakref", seen in the suite). ``definitions_state_of`` loads them under
    the instance they run on, as a replay and the test platform do."""
    import gc

    import dagster as dg
    from dagster._core.errors import DagsterInvariantViolationError
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    from mlops_assets.compat import definitions_state_of, held_connection_instance
    from mlops_assets.factory import build_definitions

    with dg.instance_for_test() as gone:
        storage = gone.defs_state_storage
    stale = set_defs_state_storage(storage)
    stale.__enter__()  # what a context entered elsewhere and never left does
    del gone
    gc.collect()
    try:
        with pytest.raises(DagsterInvariantViolationError, match="undefined DagsterInstance weakref"):
            build_definitions([flight_spec]).get_repository_def()
        instance = held_connection_instance()
        try:
            with definitions_state_of(instance):
                repository = build_definitions([flight_spec]).get_repository_def()
        finally:
            instance.dispose()
        assert repository.has_job("ingest_flight_delays")
    finally:
        stale.__exit__(None, None, None)


def test_a_replay_instance_answers_the_latest_materialization_of_a_partition_as_its_storage_does():
    """The replay's in-memory instance (``held_connection_instance``) keeps the answer to "the latest
    materialization of this asset's partition" (asked by every check result of a partitioned step)
    until that asset is materialized again or events are removed. Against the storage's own query
    after each change: materializations of two partitions, a rematerialization, a deleted run, a
    wiped asset; and each check evaluation targets its partition's newest
    materialization."""
    import dagster as dg

    from mlops_assets.compat import held_connection_instance

    parts = dg.DailyPartitionsDefinition(start_date="2024-01-01")

    @dg.asset(partitions_def=parts, check_specs=[dg.AssetCheckSpec("rows", asset="daily")])
    def daily(context):
        yield dg.Output(None)
        yield dg.AssetCheckResult(passed=True, metadata={"day": context.partition_key})

    instance = held_connection_instance()
    storage = instance.event_log_storage
    key = dg.AssetKey("daily")

    def latest(day, cached=True):
        f = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[day])
        fetch = storage.fetch_materializations if cached else super(type(storage), storage).fetch_materializations
        return [r.storage_id for r in fetch(f, limit=1).records]

    def agree():
        for day in ("2024-01-01", "2024-01-02"):
            assert latest(day) == latest(day, cached=False)

    try:
        agree()  # nothing yet: both empty
        results = [dg.materialize([daily], instance=instance, partition_key=d) for d in ("2024-01-01", "2024-01-02")]
        agree()
        again = dg.materialize([daily], instance=instance, partition_key="2024-01-01")
        agree()
        for result, day in ((again, "2024-01-01"), (results[1], "2024-01-02")):
            [evaluation] = result.get_asset_check_evaluations()
            assert evaluation.target_materialization_data.storage_id == latest(day)[0]
        instance.delete_run(results[1].run_id)
        agree()
        assert latest("2024-01-02") == [] and latest("2024-01-01")
        instance.wipe_assets([key])
        agree()
        assert latest("2024-01-01") == []
    finally:
        instance.dispose()
