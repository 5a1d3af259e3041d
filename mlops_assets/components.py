"""Model specs as Dagster components: one ``defs.yaml`` per model in ``mlops_assets/defs/``.

``dg scaffold defs mlops_assets.components.ModelSpecComponent my_model`` writes
``mlops_assets/defs/my_model/defs.yaml``: ``type`` names this component and ``attributes`` is a model
spec, with the same keys as a spec file (the bundled flight-delay spec as a starting point, named
after the folder, without a deployment). The code location loads every component in ``defs/``
(``mlops_assets.definitions``), beside the bundled specs and ``MLOPS_SPECS``, which keep working.

The component's schema *is* the spec's (``ModelSpec``), so ``dg check yaml`` reports an unknown key,
a wrong type or a value outside its choices against the spec's own fields, with the line in
``defs.yaml``; ``dg check defs`` loads it and adds what the spec checks beyond its schema (an
estimator that cannot be imported, features grouped by undeclared entities), naming the file.
``mlops check|demo|replay|backtest|serve --spec my_model`` find it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from mlops_assets.specs import BUNDLED_SPEC_DIR, ModelSpec

TEMPLATE = BUNDLED_SPEC_DIR / "flight_delays.yaml"


class ModelSpecScaffolder(dg.Scaffolder):
    """Writes ``defs.yaml`` with a complete spec to edit: the bundled flight-delay spec (its data
    ships with the package, so the new model loads, lands and trains as it is), named after the
    folder and without the bundled spec's endpoint (a second server on its port would collide)."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        attributes = yaml.safe_load(TEMPLATE.read_text())
        attributes["name"] = Path(request.target_path).name
        attributes.pop("deployment", None)
        dg.scaffold_component(request, attributes)


@dg.scaffold_with(ModelSpecScaffolder)
class ModelSpecComponent(dg.Component):
    """A model spec: the spec's assets (raw to predictions and endpoint), checks, jobs and sensors.

    ``attributes`` are the keys of a spec file (see the README's "Model specs")."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    @classmethod
    def get_model_cls(cls) -> type[ModelSpec]:
        return ModelSpec  # dg check yaml and the loader validate attributes against the spec itself

    @classmethod
    def load(cls, attributes: Any, context: dg.ComponentLoadContext) -> ModelSpecComponent:
        if not isinstance(attributes, ModelSpec):  # an empty ``attributes:``
            raise dg.DagsterInvalidDefinitionError(f"{context.path / 'defs.yaml'}: 'attributes' must hold a model spec")
        spec = attributes.model_copy()
        spec._file = str(context.path / "defs.yaml")
        return cls(spec)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from mlops_assets.factory import spec_definitions

        return spec_definitions(self.spec)
