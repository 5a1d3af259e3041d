# The platform's secrets, generated here and kept in Secrets Manager (encrypted with the data key)
# so that an operator or a workload can read them without Terraform state:
#   <name>/postgres      the PostgreSQL master credentials (RDS's JSON layout)
#   <name>/redis-auth    the Redis AUTH token
#   <name>/admin-token   MLOPS_ADMIN_TOKEN, the bearer token of the model servers' admin routes
# The same values reach the Kubernetes Secret "mlops-secrets" through Terraform's outputs
# (infra/k8s/secrets_from_terraform.py). To rotate one, replace its random_password
# (terraform apply -replace=random_password.db) and rerun that script: the secret here, the
# database or Redis and the Kubernetes Secret then change together.

resource "random_password" "admin_token" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "db" {
  # checkov:skip=CKV2_AWS_57:a Secrets Manager rotation Lambda would change the password behind the Kubernetes Secret and the Dagster, MLflow and Feast connection strings built from Terraform's outputs; rotate with terraform apply -replace=random_password.db, which updates RDS, this secret and the outputs together
  name                    = "${var.name}/postgres"
  description             = "Master credentials of ${var.name}'s PostgreSQL (Dagster instance, MLflow backend store, Feast registry)"
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = var.secret_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "db" {
  secret_id = aws_secretsmanager_secret.db.id
  secret_string = jsonencode({
    engine   = "postgres"
    host     = aws_db_instance.platform.address
    port     = aws_db_instance.platform.port
    username = var.db_username
    password = random_password.db.result
    dbname   = local.db_name
  })
}

resource "aws_secretsmanager_secret" "redis" {
  # checkov:skip=CKV2_AWS_57:a rotation Lambda would change the AUTH token behind MLOPS_REDIS in the Kubernetes Secret; rotate with terraform apply -replace=random_password.redis (ElastiCache's ROTATE strategy keeps the old token valid while clients move)
  name                    = "${var.name}/redis-auth"
  description             = "AUTH token of ${var.name}'s Redis (Feast online store)"
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = var.secret_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "redis" {
  secret_id     = aws_secretsmanager_secret.redis.id
  secret_string = random_password.redis.result
}

resource "aws_secretsmanager_secret" "admin_token" {
  # checkov:skip=CKV2_AWS_57:the model servers read MLOPS_ADMIN_TOKEN from their environment at start; a rotation Lambda would leave running servers with the old token. Rotate with terraform apply -replace=random_password.admin_token, then restart the servers
  name                    = "${var.name}/admin-token"
  description             = "MLOPS_ADMIN_TOKEN: bearer token of the admin routes of ${var.name}'s model servers"
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = var.secret_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "admin_token" {
  secret_id     = aws_secretsmanager_secret.admin_token.id
  secret_string = random_password.admin_token.result
}
