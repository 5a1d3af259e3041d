"""The code location's entry point (``workspace.yaml``, ``dagster -m``, ``dg``): one asset graph per spec.

Specs are the YAML files bundled in ``mlops_assets/specs``, any listed in ``MLOPS_SPECS``, and the
``ModelSpecComponent``s in ``mlops_assets/defs/`` (``dg scaffold defs``), which Dagster's component
loader builds along with any other component or definitions module placed there.
"""

from pathlib import Path

import dagster as dg

from mlops_assets.factory import build_definitions
from mlops_assets.specs import DEFS_DIR, load_specs

defs = build_definitions(load_specs(include_components=False))
# Dagster's component loader imports what its plugins need (pandas, boto3, google.cloud): it runs
# only once ``defs/`` holds something, so a code location without components stays cheap to load.
if any(p.name not in ("__init__.py", "__pycache__") for p in DEFS_DIR.iterdir()):
    defs = dg.Definitions.merge(defs, dg.load_from_defs_folder(project_root=Path(__file__).resolve().parents[1]))
