"""The code location's entry point (``workspace.yaml``, ``dagster -m``, ``dg``): one asset graph per spec.

Specs are the YAML files bundled in ``mlops_assets/specs`` plus any listed in ``MLOPS_SPECS``.
"""

from mlops_assets.factory import build_definitions

defs = build_definitions()
