"""Dagster components of this code location (``dg scaffold defs``): each folder with a ``defs.yaml``
is loaded by ``mlops_assets.definitions``. A model is a ``mlops_assets.components.ModelSpecComponent``."""
