# Google service accounts and least-privilege IAM. No keys are created: pods act as their Google
# service account through Workload Identity, nodes through their instance's metadata server.
#
#   gke-nodes  the nodes: write logs and metrics, pull images from the mlops repository
#   platform   KSA <namespace>/<k8s_service_account> (Dagster runs, steps, model servers):
#              objects of the landing, lake and artifacts buckets, Cloud SQL client on this
#              instance, the platform's secrets
#   mlflow     KSA <namespace>/<mlflow_k8s_service_account> (MLflow tracking server): objects of the
#              artifacts bucket, Cloud SQL client on this instance

# --- nodes ----------------------------------------------------------------------------------------

resource "google_service_account" "gke_nodes" {
  account_id   = "${var.name_prefix}-gke-nodes"
  display_name = "mlops_assets GKE nodes"
  description  = "Node service account of the ${var.name_prefix}-gke cluster (not the Compute Engine default service account)."

  depends_on = [google_project_service.enabled]
}

# What GKE's own agents on the node need (GKE's "least privilege node service account"): logs,
# metrics and the resource metadata attached to them. Nothing else at project level.
resource "google_project_iam_member" "gke_nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
  ])

  project = var.project_id
  role    = each.value
  member  = google_service_account.gke_nodes.member
}

# The kubelet pulls the platform's images with the node's identity: read access to this repository only.
resource "google_artifact_registry_repository_iam_member" "gke_nodes_reader" {
  project    = var.project_id
  location   = google_artifact_registry_repository.mlops.location
  repository = google_artifact_registry_repository.mlops.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.gke_nodes.member
}

# --- platform (Dagster runs and steps, model servers) ---------------------------------------------

resource "google_service_account" "platform" {
  account_id   = "${var.name_prefix}-platform"
  display_name = "mlops_assets platform"
  description  = "Dagster runs, steps and model servers (Kubernetes ${var.k8s_namespace}/${var.k8s_service_account} through Workload Identity)."

  depends_on = [google_project_service.enabled]
}

# Bucket-level grants: the lake and MLflow's artifacts (steps log models directly to GCS), and the
# landing zone, where the landing sensor moves refused files to quarantine (read, then delete).
resource "google_storage_bucket_iam_member" "platform" {
  for_each = google_storage_bucket.data

  bucket = each.value.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.platform.member
}

# roles/cloudsql.client (Cloud SQL connectors and Auth Proxy), limited to this instance.
resource "google_project_iam_member" "platform_cloudsql" {
  project = var.project_id
  role    = "roles/cloudsql.client"
  member  = google_service_account.platform.member

  condition {
    title       = "${var.name_prefix}-pg-only"
    description = "Only the mlops_assets Cloud SQL instance."
    expression  = "resource.name == \"projects/${var.project_id}/instances/${google_sql_database_instance.main.name}\" && resource.service == \"sqladmin.googleapis.com\""
  }
}

# The platform reads its own secrets, and no others in the project.
resource "google_secret_manager_secret_iam_member" "platform" {
  for_each = google_secret_manager_secret.platform

  secret_id = each.value.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.platform.member
}

# Workload Identity: the Kubernetes service account acts as this Google service account. The
# identity pool exists once a cluster with Workload Identity exists.
resource "google_service_account_iam_member" "platform_workload_identity" {
  service_account_id = google_service_account.platform.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${local.workload_pool}[${var.k8s_namespace}/${var.k8s_service_account}]"

  depends_on = [google_container_cluster.main]
}

# --- MLflow tracking server -----------------------------------------------------------------------

resource "google_service_account" "mlflow" {
  account_id   = "${var.name_prefix}-mlflow"
  display_name = "mlops_assets MLflow"
  description  = "MLflow tracking server (Kubernetes ${var.k8s_namespace}/${var.mlflow_k8s_service_account} through Workload Identity)."

  depends_on = [google_project_service.enabled]
}

resource "google_storage_bucket_iam_member" "mlflow_artifacts" {
  bucket = google_storage_bucket.data["artifacts"].name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.mlflow.member
}

resource "google_project_iam_member" "mlflow_cloudsql" {
  project = var.project_id
  role    = "roles/cloudsql.client"
  member  = google_service_account.mlflow.member

  condition {
    title       = "${var.name_prefix}-pg-only"
    description = "Only the mlops_assets Cloud SQL instance."
    expression  = "resource.name == \"projects/${var.project_id}/instances/${google_sql_database_instance.main.name}\" && resource.service == \"sqladmin.googleapis.com\""
  }
}

resource "google_service_account_iam_member" "mlflow_workload_identity" {
  service_account_id = google_service_account.mlflow.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${local.workload_pool}[${var.k8s_namespace}/${var.mlflow_k8s_service_account}]"

  depends_on = [google_container_cluster.main]
}
