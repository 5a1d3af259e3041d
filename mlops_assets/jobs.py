"""Named jobs per spec, for CI (``dagster job execute``), ``dg launch`` and the demo.

* ``register_<spec>``: Feast registration and lookup tables (once, and whenever the spec changes)
* ``ingest_<spec>`` (daily partition): raw → dataset (+ blocking checks) → features → online store
* ``train_<spec>``: Feast registration → training set → challenger → promotion gate
* ``score_<spec>`` (daily partition): batch predictions of the champion
* ``deploy_<spec>`` (specs with a ``deployment``): apply and verify the endpoint, judge a canary
* ``lookups_<spec>`` (an endpoint serving a timestamped lookup): the lookups online as of a moment,
  run hourly by ``lookups_<spec>_schedule`` (``online_lookups``)
"""

from __future__ import annotations

import dagster as dg

from mlops_assets.common import key
from mlops_assets.core.names import job_name
from mlops_assets.specs import ModelSpec

STAGES = {
    "register": ("feature_registry",),
    "ingest": ("raw", "dataset", "features", "online_features"),
    "train": ("feature_registry", "training_set", "model", "champion"),
    "score": ("predictions",),
    "deploy": ("endpoint",),
    "lookups": ("online_lookups",),
}


def build(spec: ModelSpec) -> list[dg.UnresolvedAssetJobDefinition]:
    descriptions = {
        "register": "Register the spec's Feast entities, feature views and feature service; snapshot lookup tables.",
        "ingest": 'Land-to-online-store for one day (pass the partition, e.g. --tags \'{"dagster/partition": "2013-01-05"}\').',
        "train": "Register features, build the point-in-time training set, fit the challenger, run the promotion gate.",
        "score": "Score one day's events with the champion.",
        "deploy": "Apply the champion to the endpoint (through the canary when configured) and verify what it serves.",
        "lookups": "Write the timestamped lookups the endpoint serves into the online store, as of a moment (hourly).",
    }
    return [
        dg.define_asset_job(
            job_name(kind, spec),
            selection=dg.AssetSelection.assets(*(key(stage, spec) for stage in stages)),
            description=f"{spec.name}: {descriptions[kind]}",
            tags={"mlops/spec": spec.name, "mlops/job": kind},
        )
        for kind, stages in STAGES.items()
        if (kind != "deploy" or spec.deployment is not None) and (kind != "lookups" or spec.served_timed_lookups)
    ]
