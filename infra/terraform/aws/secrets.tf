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

locals {
  # Name suffix => description. Each is rotated by replacing its random_password (see above):
  #   postgres     RDS, this secret and the Dagster, MLflow and Feast connection strings change together
  #   redis-auth   ElastiCache's ROTATE strategy keeps the old token valid while clients move
  #   admin-token  the model servers read it at start: restart them afterwards
  platform_secrets = {
    postgres    = "Master credentials of ${var.name}'s PostgreSQL (Dagster instance, MLflow backend store, Feast registry)"
    redis-auth  = "AUTH token of ${var.name}'s Redis (Feast online store)"
    admin-token = "MLOPS_ADMIN_TOKEN: bearer token of the admin routes of ${var.name}'s model servers"
  }

  # The values, looked up by key: sensitive values stay out of for_each arguments.
  platform_secret_values = {
    postgres = jsonencode({
      engine   = "postgres"
      host     = aws_db_instance.platform.address
      port     = aws_db_instance.platform.port
      username = var.db_username
      password = random_password.db.result
      dbname   = local.db_name
    })
    redis-auth  = random_password.redis.result
    admin-token = random_password.admin_token.result
  }
}

resource "aws_secretsmanager_secret" "platform" {
  # checkov:skip=CKV2_AWS_57:a Secrets Manager rotation Lambda would change a value behind the Kubernetes Secret mlops-secrets (the PostgreSQL password inside the Dagster, MLflow and Feast connection strings, the Redis AUTH token inside MLOPS_REDIS, MLOPS_ADMIN_TOKEN that running model servers read at start) without updating Terraform's outputs; rotate with terraform apply -replace=random_password.<db|redis|admin_token>, which updates the database or Redis, this secret and the outputs together
  for_each = local.platform_secrets

  name                    = "${var.name}/${each.key}"
  description             = each.value
  kms_key_id              = aws_kms_key.this["data"].arn
  recovery_window_in_days = var.secret_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "platform" {
  for_each = aws_secretsmanager_secret.platform

  secret_id     = each.value.id
  secret_string = local.platform_secret_values[each.key]
}
