"""The ``compute:`` section of a spec: how big each step's container is on the ``k8s`` profile.

Apart from the model's own sections because it sizes infrastructure, not the model: it is not part of
the spec's hash, and only the ``k8s`` profile reads it. Quantities are checked here, as Kubernetes
reads them, so that a wrong size fails loading the spec rather than a Job at run time.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from mlops_assets.specs.base import StrictModel

_CPU_RE = re.compile(r"^(?:\d+(?:\.\d+)?|\.\d+|\d+m)$")
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_MEMORY_FACTORS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_MEMORY_FACTORS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_MIN_MEMORY_BYTES = 32 * 2**20


class StepResources(StrictModel):
    """What one step (one Kubernetes Job on the ``k8s`` profile) asks for, in Kubernetes quantities:
    ``cpu`` in cores (``2``, ``0.5``, ``500m``), ``memory`` in bytes with a unit (``512Mi``, ``4Gi``,
    ``8G``), ``gpu`` whole NVIDIA GPUs. Requests and limits are the same: a step gets what it asks
    for and never more, so a step that needs more says so here. ``spot``: the step may run on the
    spot (preemptible) node group; a node reclaimed mid-step fails the step, and a later run redoes it."""

    cpu: str = "500m"
    memory: str = "1Gi"
    gpu: int = Field(0, ge=0, le=16)
    spot: bool = False

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _number_as_text(cls, v: Any) -> Any:
        # YAML reads `cpu: 2` as a number; Kubernetes quantities are text
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: str) -> str:
        if not _CPU_RE.match(v):
            raise ValueError(f"cpu {v!r} is not a Kubernetes CPU quantity (cores: '2', '0.5', or millicores: '500m')")
        cores = float(v[:-1]) / 1000 if v.endswith("m") else float(v)
        if cores <= 0:
            raise ValueError(f"cpu {v!r} must be more than 0")
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        match = _MEMORY_RE.match(v)
        if not match:
            raise ValueError(f"memory {v!r} is not a Kubernetes memory quantity (e.g. '512Mi', '4Gi', '8G')")
        if float(match[1]) * _MEMORY_FACTORS[match[2]] < _MIN_MEMORY_BYTES:
            raise ValueError(f"memory {v!r} is less than 32Mi (a number without a unit is bytes: write e.g. '512Mi')")
        return v


class TrainStepResources(StepResources):
    """A training step's size: the same fields with heavier defaults, on the spot node group."""

    cpu: str = "2"
    memory: str = "4Gi"
    spot: bool = True


class ComputeSpec(StrictModel):
    """How big each step's container is on the ``k8s`` profile, where every step is its own Kubernetes
    Job (``mlops_assets.k8s.op_tags``); the other profiles ignore it. ``train`` sizes the training
    steps (``training_set_<model>``, ``model_<model>``), which may use the spot node group and a GPU;
    ``default`` every other step (ingest, features, scoring, deployment). Not part of the spec's
    hash: resizing a step does not make its assets stale nor retrain the model."""

    default: StepResources = StepResources()
    train: TrainStepResources = TrainStepResources()
