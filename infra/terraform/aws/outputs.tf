# Outputs in UPPERCASE are the environment of the cloud profile, named exactly as the variables
# mlops_assets reads (environments.CLOUD_VARS, environments.DAGSTER_PG_VARS, mlops_assets/k8s.py):
# infra/k8s/secrets_from_terraform.py turns `terraform output -json` into the Kubernetes Secret
# "mlops-secrets", one key per uppercase output. Lowercase outputs describe the infrastructure.

locals {
  db_host   = aws_db_instance.platform.address
  db_userpw = "${var.db_username}:${random_password.db.result}"
}

# --- the cloud profile's environment -------------------------------------------------------------

output "MLOPS_ENV" {
  description = "Profile of the platform's pods: every run and step is a Kubernetes Job on the cloud's stores."
  value       = "k8s"
}

output "MLOPS_K8S_CLOUD" {
  description = "Cloud whose stores the k8s profile uses."
  value       = "aws"
}

output "MLOPS_K8S_NAMESPACE" {
  description = "Namespace of the run and step Jobs."
  value       = var.k8s_namespace
}

output "MLOPS_K8S_SERVICE_ACCOUNT" {
  description = "Service account of the run and step pods (annotate it with mlops_role_arn)."
  value       = var.k8s_service_account
}

output "MLOPS_STORAGE_URI" {
  description = "Lake, quarantine, endpoint state, prediction store and alerts."
  value       = "s3://${aws_s3_bucket.data["lake"].id}/${var.storage_prefix}"
}

output "MLOPS_LANDING_URI" {
  description = "Landing zone the landing sensor watches (producers write <spec>/<YYYY-MM-DD>.<ext> under it)."
  value       = "s3://${aws_s3_bucket.data["landing"].id}/${local.landing_prefix}"
}

output "MLOPS_IO_BUCKET" {
  description = "Bucket of the Dagster IO manager (it writes under dagster-io/)."
  value       = aws_s3_bucket.data["lake"].id
}

output "MLFLOW_TRACKING_URI" {
  description = "MLflow backend store: the mlflow database (created by the Kubernetes bootstrap Job), over TLS."
  value       = "postgresql://${local.db_userpw}@${local.db_host}:${local.db_port}/mlflow?sslmode=require"
  sensitive   = true
}

output "MLFLOW_ARTIFACT_URI" {
  description = "Artifact root of new MLflow experiments."
  value       = "s3://${aws_s3_bucket.data["artifacts"].id}/${local.mlflow_prefix}"
}

output "FEAST_REGISTRY_URI" {
  description = "Feast SQL registry: the feast database (created by the Kubernetes bootstrap Job), over TLS."
  value       = "postgresql+psycopg://${local.db_userpw}@${local.db_host}:${local.db_port}/feast?sslmode=require"
  sensitive   = true
}

output "MLOPS_REDIS" {
  description = "Feast's Redis online store: primary endpoint, AUTH token, TLS."
  value       = "${aws_elasticache_replication_group.feast.primary_endpoint_address}:${local.redis_port},password=${random_password.redis.result},ssl=true"
  sensitive   = true
}

output "MLOPS_ADMIN_TOKEN" {
  description = "Bearer token of the model servers' admin routes (also in Secrets Manager: admin_token_secret_arn)."
  value       = random_password.admin_token.result
  sensitive   = true
}

output "DAGSTER_PG_HOST" {
  description = "PostgreSQL host of the Dagster instance."
  value       = local.db_host
}

output "DAGSTER_PG_PORT" {
  description = "PostgreSQL port of the Dagster instance (a string, as in the environment)."
  value       = tostring(local.db_port)
}

output "DAGSTER_PG_USER" {
  description = "PostgreSQL user of the Dagster instance."
  value       = var.db_username
}

output "DAGSTER_PG_PASSWORD" {
  description = "PostgreSQL password of the Dagster instance (also the chart's dagster-postgresql-secret)."
  value       = random_password.db.result
  sensitive   = true
}

output "DAGSTER_PG_DB" {
  description = "Database of the Dagster instance."
  value       = local.db_name
}

# --- infrastructure ------------------------------------------------------------------------------

output "region" {
  description = "AWS region of the platform."
  value       = var.region
}

output "cluster_name" {
  description = "EKS cluster name."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint of the cluster."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA certificate of the cluster's API endpoint."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "cluster_oidc_provider_arn" {
  description = "IAM OIDC provider of the cluster (IRSA), for further service account roles."
  value       = aws_iam_openid_connect_provider.eks.arn
}

output "kubeconfig_command" {
  description = "Command that adds the cluster to the local kubeconfig."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${aws_eks_cluster.this.name}"
}

output "vpc_id" {
  description = "VPC of the platform."
  value       = aws_vpc.this.id
}

output "private_subnet_ids" {
  description = "Private subnets (nodes, databases)."
  value       = aws_subnet.private[*].id
}

output "ecr_code_location_url" {
  description = "Repository of the code-location image (docker build -f infra/Dockerfile .)."
  value       = aws_ecr_repository.this["code_location"].repository_url
}

output "ecr_serving_url" {
  description = "Repository of the model-server image (docker build -f infra/Dockerfile --target serving .); a spec's sagemaker.image_uri and kubernetes.image point here."
  value       = aws_ecr_repository.this["serving"].repository_url
}

output "mlops_role_arn" {
  description = "IAM role of the Dagster service account: annotate it with eks.amazonaws.com/role-arn."
  value       = aws_iam_role.workload["mlops"].arn
}

output "mlflow_role_arn" {
  description = "IAM role of the MLflow service account: annotate it with eks.amazonaws.com/role-arn."
  value       = aws_iam_role.workload["mlflow"].arn
}

output "sagemaker_execution_role_arn" {
  description = "Execution role of SageMaker endpoints: a spec's deployment.sagemaker.role_arn."
  value       = aws_iam_role.workload["sagemaker"].arn
}

output "sagemaker_model_data_prefix" {
  description = "Where the sagemaker target uploads model archives: a spec's deployment.sagemaker.model_data_prefix."
  value       = "s3://${aws_s3_bucket.data["artifacts"].id}/${local.sagemaker_prefix}"
}

output "cluster_autoscaler_role_arn" {
  description = "IAM role of the cluster autoscaler (service account kube-system:cluster-autoscaler)."
  value       = aws_iam_role.workload["cluster_autoscaler"].arn
}

output "landing_bucket" {
  description = "Landing bucket: grant the data producers s3:PutObject on it."
  value       = aws_s3_bucket.data["landing"].id
}

output "lake_bucket" {
  description = "Lake bucket."
  value       = aws_s3_bucket.data["lake"].id
}

output "artifacts_bucket" {
  description = "MLflow artifacts and SageMaker model archives bucket."
  value       = aws_s3_bucket.data["artifacts"].id
}

output "data_kms_key_arn" {
  description = "KMS key of the platform's data; producers writing to the landing bucket need kms:GenerateDataKey on it."
  value       = aws_kms_key.this["data"].arn
}

output "db_password_secret_arn" {
  description = "Secrets Manager secret with the PostgreSQL master credentials."
  value       = aws_secretsmanager_secret.platform["postgres"].arn
}

output "redis_auth_secret_arn" {
  description = "Secrets Manager secret with the Redis AUTH token."
  value       = aws_secretsmanager_secret.platform["redis-auth"].arn
}

output "admin_token_secret_arn" {
  description = "Secrets Manager secret with MLOPS_ADMIN_TOKEN."
  value       = aws_secretsmanager_secret.platform["admin-token"].arn
}
