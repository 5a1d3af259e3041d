# Outputs. The UPPERCASE ones are named exactly after the environment variables the gcp/k8s profile
# reads (mlops_assets.environments.CloudVars, DAGSTER_PG_VARS, mlops_assets.k8s): together they are
# the keys of the Kubernetes Secret mlops-secrets (README "Kubernetes Secret"). Lowercase ones
# describe the infrastructure for the people and scripts that deploy onto it.

locals {
  db_host = google_sql_database_instance.main.private_ip_address
  db_port = 5432
  # The server refuses unencrypted connections; sslmode=require also makes the clients refuse them.
  db_url_auth = "${var.db_username}:${random_password.db.result}@${local.db_host}:${local.db_port}"
}

# --- the profile's variables ----------------------------------------------------------------------

output "MLOPS_ENV" {
  description = "Profile of the platform's processes on the cluster."
  value       = "k8s"
}

output "MLOPS_K8S_CLOUD" {
  description = "Cloud whose stores the k8s profile uses."
  value       = "gcp"
}

output "MLOPS_K8S_NAMESPACE" {
  description = "Namespace of the runs, steps and model servers."
  value       = var.k8s_namespace
}

output "MLOPS_K8S_SERVICE_ACCOUNT" {
  description = "Kubernetes service account of runs, steps and model servers (bound to mlops_gsa_email)."
  value       = var.k8s_service_account
}

output "GOOGLE_CLOUD_PROJECT" {
  description = "Project of the GCS IO manager and the Google clients."
  value       = var.project_id
}

output "MLOPS_STORAGE_URI" {
  description = "Lake, quarantine, prediction store, endpoints state and alerts."
  value       = "gs://${google_storage_bucket.data["lake"].name}/mlops"
}

output "MLOPS_LANDING_URI" {
  description = "Landing zone the landing sensor watches."
  value       = "gs://${google_storage_bucket.data["landing"].name}/landing"
}

output "MLOPS_IO_BUCKET" {
  description = "Bucket of the Dagster IO manager (it writes under dagster-io/)."
  value       = google_storage_bucket.data["lake"].name
}

output "MLFLOW_TRACKING_URI" {
  description = "MLflow backend store (tracking and model registry) on Cloud SQL."
  value       = "postgresql://${local.db_url_auth}/${google_sql_database.platform["mlflow"].name}?sslmode=require"
  sensitive   = true
}

output "MLFLOW_ARTIFACT_URI" {
  description = "Artifact root of new MLflow experiments."
  value       = "gs://${google_storage_bucket.data["artifacts"].name}/mlflow"
}

output "FEAST_REGISTRY_URI" {
  description = "Feast SQL registry on Cloud SQL."
  value       = "postgresql+psycopg://${local.db_url_auth}/${google_sql_database.platform["feast"].name}?sslmode=require"
  sensitive   = true
}

output "MLOPS_REDIS" {
  description = "Feast's Redis online store: host:port,password=<AUTH>,ssl=true (clients must trust redis_server_ca_certs)."
  value       = "${google_redis_instance.online_store.host}:${google_redis_instance.online_store.port},password=${google_redis_instance.online_store.auth_string},ssl=true"
  sensitive   = true
}

output "MLOPS_ADMIN_TOKEN" {
  description = "Bearer token of the model servers' admin routes (also in Secret Manager: admin_token_secret_id)."
  value       = random_password.admin_token.result
  sensitive   = true
}

output "DAGSTER_PG_HOST" {
  description = "Private address of the Cloud SQL instance (Dagster instance storage)."
  value       = local.db_host
}

output "DAGSTER_PG_PORT" {
  description = "PostgreSQL port (a string, as an environment variable holds it)."
  value       = tostring(local.db_port)
}

output "DAGSTER_PG_USER" {
  description = "PostgreSQL user of the Dagster instance."
  value       = google_sql_user.platform.name
}

output "DAGSTER_PG_PASSWORD" {
  description = "PostgreSQL password (also in Secret Manager: db_password_secret_id)."
  value       = random_password.db.result
  sensitive   = true
}

output "DAGSTER_PG_DB" {
  description = "Database of the Dagster instance."
  value       = google_sql_database.platform["dagster"].name
}

# --- infrastructure -------------------------------------------------------------------------------

output "region" {
  description = "Region of the platform."
  value       = var.region
}

output "cluster_name" {
  description = "GKE cluster name."
  value       = google_container_cluster.main.name
}

output "cluster_location" {
  description = "GKE cluster location (the region, or the zone of a zonal cluster)."
  value       = google_container_cluster.main.location
}

output "cluster_endpoint" {
  description = "Control-plane endpoint of the cluster."
  value       = google_container_cluster.main.endpoint
  sensitive   = true
}

output "get_credentials_command" {
  description = "Writes the cluster's kubeconfig entry."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.main.name} --location ${google_container_cluster.main.location} --project ${var.project_id}"
}

output "artifact_registry_url" {
  description = "Docker repository holding both images (docker push/pull prefix)."
  value       = local.registry_url
}

output "artifact_code_location_url" {
  description = "Image of the code location (infra/Dockerfile default target): Dagster user code, runs and steps."
  value       = "${local.registry_url}/mlops-assets"
}

output "artifact_serving_url" {
  description = "Image of the model server (infra/Dockerfile --target serving)."
  value       = "${local.registry_url}/mlops-serving"
}

output "mlops_gsa_email" {
  description = "Google service account of runs, steps and model servers: annotate the Kubernetes service account with iam.gke.io/gcp-service-account."
  value       = google_service_account.platform.email
}

output "mlflow_gsa_email" {
  description = "Google service account of the MLflow tracking server: annotate its Kubernetes service account with iam.gke.io/gcp-service-account."
  value       = google_service_account.mlflow.email
}

output "db_instance_connection_name" {
  description = "Cloud SQL connection name (project:region:instance) for the Cloud SQL Auth Proxy or connectors."
  value       = google_sql_database_instance.main.connection_name
}

output "db_password_secret_id" {
  description = "Secret Manager secret holding the PostgreSQL password."
  value       = google_secret_manager_secret.platform["db-password"].secret_id
}

output "redis_auth_secret_id" {
  description = "Secret Manager secret holding the Redis AUTH string."
  value       = google_secret_manager_secret.platform["redis-auth"].secret_id
}

output "admin_token_secret_id" {
  description = "Secret Manager secret holding the admin token."
  value       = google_secret_manager_secret.platform["admin-token"].secret_id
}

output "redis_server_ca_certs" {
  description = "PEM certificates of the Memorystore instance's server CA: Redis clients must trust them for TLS (README \"Redis TLS\")."
  value       = join("\n", [for c in google_redis_instance.online_store.server_ca_certs : trimspace(c.cert)])
}

output "landing_bucket" {
  description = "Landing bucket name."
  value       = google_storage_bucket.data["landing"].name
}

output "lake_bucket" {
  description = "Lake bucket name."
  value       = google_storage_bucket.data["lake"].name
}

output "artifacts_bucket" {
  description = "MLflow artifacts bucket name."
  value       = google_storage_bucket.data["artifacts"].name
}
