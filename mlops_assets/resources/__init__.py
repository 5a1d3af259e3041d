"""One typed ``ConfigurableResource`` per external system. Heavy clients are imported inside methods."""

from mlops_assets.resources.endpoints import EndpointDeployer
from mlops_assets.resources.feast import FeastFeatureStore
from mlops_assets.resources.mlflow import MlflowTracking
from mlops_assets.resources.storage import LakeStorage

__all__ = ["EndpointDeployer", "FeastFeatureStore", "LakeStorage", "MlflowTracking"]
