"""The Dagster IO manager of the cloud profiles: pickled outputs on S3 or GCS.

dagster-aws's and dagster-gcp's own IO managers do the work; this factory only defers importing
them (boto3, google-cloud-storage) to the moment a run starts, so loading the code location, which
the UI, the daemon and every run process do, stays as cheap as on a laptop.
"""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field


class ObjectStoreIOManager(dg.ConfigurableIOManagerFactory):
    """Outputs pickled to ``<protocol>://<bucket>/<prefix>/<asset key>`` by dagster-aws
    (``PickledObjectS3IOManager``) or dagster-gcp (``PickledObjectGCSIOManager``)."""

    protocol: Literal["s3", "gs"] = Field(description="s3 (dagster-aws) or gs (dagster-gcp).")
    bucket: str = Field(description="Bucket of the outputs.")
    prefix: str = Field("dagster-io", description="Key prefix of the outputs.")
    project: str | None = Field(None, description="GCP project of the bucket (gs only).")

    def create_io_manager(self, context) -> dg.IOManager:
        if self.protocol == "s3":
            import boto3
            from dagster_aws.s3.io_manager import PickledObjectS3IOManager

            return PickledObjectS3IOManager(self.bucket, boto3.resource("s3").meta.client, self.prefix)
        from dagster_gcp.gcs.io_manager import PickledObjectGCSIOManager
        from google.cloud import storage

        return PickledObjectGCSIOManager(self.bucket, storage.Client(project=self.project), self.prefix)
