# One Cloud SQL PostgreSQL instance, three databases: dagster (the Dagster instance: runs, events,
# schedules), mlflow (MLflow's backend store and model registry) and feast (Feast's SQL registry).
# Reachable on its private VPC address only, over TLS.

# Cloud SQL keeps a deleted instance's name reserved for about a week: a suffix lets an environment
# be recreated under the same prefix.
resource "random_id" "db_suffix" {
  byte_length = 3
}

# URL-safe characters only: the password is written into the postgresql:// connection strings.
resource "random_password" "db" {
  length           = 40
  special          = true
  override_special = "-_"
  min_lower        = 4
  min_upper        = 4
  min_numeric      = 4
}

resource "google_sql_database_instance" "main" {
  # checkov:skip=CKV_GCP_6:ssl_mode ENCRYPTED_ONLY refuses every unencrypted connection; TRUSTED_CLIENT_CERTIFICATE_REQUIRED would add client certificates to distribute to every run, step and MLflow pod, while clients already authenticate by password over TLS on a private-only address
  # checkov:skip=CKV_GCP_79:the major version is var.postgres_version (default POSTGRES_16, supported upstream until November 2028); a major upgrade is a planned operation with downtime and a dump/restore check, chosen by the operator, not forced by a lint
  # checkov:skip=CKV_GCP_108:log_hostname makes the server resolve every client address by reverse DNS; clients are pods with ephemeral addresses that have no PTR records, so it adds a failed lookup to each connection (Dagster opens one per storage call) and logs nothing useful; log_connections already records the client address
  # checkov:skip=CKV_GCP_110:pgAudit writes to Cloud Audit Logs' Data Access logs, which are configured project-wide outside this platform; log_statement=ddl and log_connections/log_disconnections already record schema changes and sessions in the instance's own logs
  name             = "${var.name_prefix}-pg-${random_id.db_suffix.hex}"
  region           = var.region
  database_version = var.postgres_version

  deletion_protection = var.deletion_protection

  settings {
    tier                        = var.db_tier
    edition                     = var.db_edition
    availability_type           = var.db_availability_type
    disk_type                   = "PD_SSD"
    disk_size                   = var.db_disk_size_gb
    disk_autoresize             = true
    disk_autoresize_limit       = var.db_disk_autoresize_limit_gb
    deletion_protection_enabled = var.deletion_protection
    user_labels                 = local.labels

    ip_configuration {
      ipv4_enabled                                  = false
      private_network                               = google_compute_network.main.id
      allocated_ip_range                            = google_compute_global_address.private_services.name
      ssl_mode                                      = "ENCRYPTED_ONLY"
      enable_private_path_for_google_cloud_services = true
    }

    backup_configuration {
      enabled                        = true
      start_time                     = var.db_backup_start_time
      point_in_time_recovery_enabled = true
      transaction_log_retention_days = var.db_transaction_log_retention_days

      backup_retention_settings {
        retained_backups = var.db_backups_retained
        retention_unit   = "COUNT"
      }
    }

    maintenance_window {
      day          = 7 # Sunday
      hour         = 3 # UTC
      update_track = "stable"
    }

    insights_config {
      query_insights_enabled  = true
      query_string_length     = 1024
      record_application_tags = true
      record_client_address   = true
    }

    # Logging flags (CIS PostgreSQL benchmark for Cloud SQL): sessions, checkpoints, lock waits,
    # temporary files, schema changes and statement durations, without statement text of slow
    # queries (which could hold data) and without the costly per-statement statistics.
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "warning"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "log_duration"
      value = "on"
    }
    database_flags {
      name  = "log_executor_stats"
      value = "off"
    }
    database_flags {
      name  = "log_parser_stats"
      value = "off"
    }
    database_flags {
      name  = "log_planner_stats"
      value = "off"
    }
    database_flags {
      name  = "log_statement_stats"
      value = "off"
    }
  }

  depends_on = [google_service_networking_connection.private_services]
}

resource "google_sql_database" "platform" {
  for_each = toset(["dagster", "mlflow", "feast"])

  name      = each.key
  instance  = google_sql_database_instance.main.name
  charset   = "UTF8"
  collation = "en_US.UTF8"
}

resource "google_sql_user" "platform" {
  name     = var.db_username
  instance = google_sql_database_instance.main.name
  password = random_password.db.result

  # The user owns the tables of all three databases; PostgreSQL refuses to drop a role that owns
  # objects, so a teardown leaves it to the instance's deletion.
  deletion_policy = "ABANDON"
}
