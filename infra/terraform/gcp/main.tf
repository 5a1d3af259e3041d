# Names shared by every file, and the Google APIs the platform uses.

locals {
  labels = merge(var.labels, {
    app        = "mlops-assets"
    managed-by = "terraform"
  })

  # A regional cluster (the default) spreads the control plane and the nodes over the region's zones.
  cluster_location = coalesce(var.cluster_zone, var.region)
  bucket_location  = upper(coalesce(var.bucket_location, var.region))

  # Workload Identity: a Kubernetes service account acts as a Google service account.
  workload_pool = "${var.project_id}.svc.id.goog"

  # The one Docker repository and the two images it holds (infra/Dockerfile's default and serving targets).
  registry_host = "${var.region}-docker.pkg.dev"
  registry_url  = "${local.registry_host}/${var.project_id}/${google_artifact_registry_repository.mlops.repository_id}"

  # With a customer-managed key, the service agents of Cloud Storage and Artifact Registry must be
  # allowed to use it (unless the key's owners grant that themselves).
  grant_kms = var.kms_key_name != null && var.kms_grant_service_agents
}

resource "google_project_service" "enabled" {
  for_each = toset(concat([
    "artifactregistry.googleapis.com",
    "binaryauthorization.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com", # Workload Identity exchanges Kubernetes tokens for Google ones
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "redis.googleapis.com",
    "secretmanager.googleapis.com",
    "servicenetworking.googleapis.com",
    "sqladmin.googleapis.com",
    "storage.googleapis.com",
  ], var.kms_key_name == null ? [] : ["cloudkms.googleapis.com"]))

  project = var.project_id
  service = each.value

  # Turning an API off on destroy would break anything else in the project that uses it.
  disable_on_destroy         = false
  disable_dependent_services = false
}
