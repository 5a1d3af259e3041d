# Secret Manager: the record of the platform's three secrets (database password, Redis AUTH string,
# admin token of the model servers' admin routes). The Kubernetes Secret mlops-secrets is written
# from the same values (README "Kubernetes Secret"); rotating one means a new version here and a
# new Secret there.

# Bearer token of the model servers' admin routes (MLOPS_ADMIN_TOKEN): changes what is served.
resource "random_password" "admin_token" {
  length  = 48
  special = false
}

locals {
  # Secret id suffix => what the secret is for (its "purpose" label).
  platform_secrets = {
    db-password = "cloud-sql-password"
    redis-auth  = "memorystore-auth"
    admin-token = "model-server-admin-token"
  }

  # The values, looked up by key: sensitive values stay out of for_each arguments.
  platform_secret_values = {
    db-password = random_password.db.result
    redis-auth  = google_redis_instance.online_store.auth_string
    admin-token = random_password.admin_token.result
  }
}

resource "google_secret_manager_secret" "platform" {
  for_each = local.platform_secrets

  secret_id = "${var.name_prefix}-${each.key}"

  labels = {
    purpose = each.value
  }

  replication {
    dynamic "auto" {
      for_each = length(var.secret_replica_locations) == 0 ? [1] : []
      content {}
    }

    dynamic "user_managed" {
      for_each = length(var.secret_replica_locations) == 0 ? [] : [1]
      content {
        dynamic "replicas" {
          for_each = var.secret_replica_locations
          content {
            location = replicas.value
          }
        }
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_version" "platform" {
  for_each = google_secret_manager_secret.platform

  secret      = each.value.id
  secret_data = local.platform_secret_values[each.key]
}
