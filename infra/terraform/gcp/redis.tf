# Memorystore for Redis: Feast's online store (MLOPS_REDIS). Private address from the private
# service access range, AUTH required, TLS with server authentication (clients must trust the
# instance's CA: output redis_server_ca_certs, README "Redis TLS").

resource "google_redis_instance" "online_store" {
  name           = "${var.name_prefix}-online-store"
  display_name   = "mlops_assets Feast online store"
  region         = var.region
  tier           = var.redis_tier
  memory_size_gb = var.redis_memory_size_gb
  redis_version  = var.redis_version

  authorized_network = google_compute_network.main.id
  connect_mode       = "PRIVATE_SERVICE_ACCESS"
  reserved_ip_range  = google_compute_global_address.private_services.name

  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"

  # Snapshots let a failed instance come back with its features instead of waiting for every
  # spec's next materialization.
  persistence_config {
    persistence_mode    = "RDB"
    rdb_snapshot_period = "TWELVE_HOURS"
  }

  maintenance_policy {
    weekly_maintenance_window {
      day = "SUNDAY"
      start_time {
        hours   = 4
        minutes = 0
        seconds = 0
        nanos   = 0
      }
    }
  }

  depends_on = [google_service_networking_connection.private_services]
}
