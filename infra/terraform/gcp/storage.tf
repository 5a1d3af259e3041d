# The three data buckets of the platform (all private, versioned, optionally CMEK-encrypted):
#   landing    the landing zone the landing sensor watches (MLOPS_LANDING_URI = gs://<landing>/landing)
#   lake       lake, quarantine, prediction store, endpoints state, alerts and the Dagster IO manager's
#              outputs (MLOPS_STORAGE_URI = gs://<lake>/mlops, MLOPS_IO_BUCKET = <lake>)
#   artifacts  MLflow's artifact root (MLFLOW_ARTIFACT_URI = gs://<artifacts>/mlflow)
# and a log bucket receiving their usage logs.

data "google_storage_project_service_account" "gcs" {
  count = local.grant_kms ? 1 : 0

  project = var.project_id

  depends_on = [google_project_service.enabled]
}

# The GCS service agent encrypts with the key on the buckets' behalf.
resource "google_kms_crypto_key_iam_member" "gcs" {
  count = local.grant_kms ? 1 : 0

  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${data.google_storage_project_service_account.gcs[0].email_address}"
}

locals {
  # The data buckets, each with what it does with its current objects besides the rules all three
  # share (noncurrent versions and abandoned uploads, below). A rule sets an age, optionally the
  # classes it applies to, and an action: Delete, or SetStorageClass to storage_class.
  data_buckets = {
    # A landing file is ingested within a day or moved to quarantine: what is still here after
    # landing_expiration_days is only a copy.
    landing = [
      { age = var.landing_expiration_days, matches_storage_class = null, action = "Delete", storage_class = null },
    ]
    # Old partitions and predictions are read rarely (backfills, audits): cheaper classes with age.
    # State files are rewritten often and stay young, so they remain STANDARD.
    lake = [
      { age = var.lake_nearline_after_days, matches_storage_class = ["STANDARD"], action = "SetStorageClass", storage_class = "NEARLINE" },
      { age = var.lake_coldline_after_days, matches_storage_class = ["STANDARD", "NEARLINE"], action = "SetStorageClass", storage_class = "COLDLINE" },
    ]
    # Model artifacts are kept as long as their MLflow runs (a registered version points at them);
    # only replaced or deleted versions expire.
    artifacts = []
  }
}

resource "google_storage_bucket" "data" {
  for_each = local.data_buckets

  name          = "${var.project_id}-${var.name_prefix}-${each.key}"
  location      = local.bucket_location
  storage_class = "STANDARD"
  force_destroy = false

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  dynamic "logging" {
    for_each = google_storage_bucket.access_logs[*].name
    content {
      log_bucket        = logging.value
      log_object_prefix = "${each.key}/"
    }
  }

  dynamic "lifecycle_rule" {
    for_each = each.value
    content {
      condition {
        age                   = lifecycle_rule.value.age
        matches_storage_class = lifecycle_rule.value.matches_storage_class
        with_state            = "LIVE"
      }
      action {
        type          = lifecycle_rule.value.action
        storage_class = lifecycle_rule.value.storage_class
      }
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      num_newer_versions = var.noncurrent_versions_to_keep
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  lifecycle {
    precondition {
      condition     = each.key != "lake" || var.lake_coldline_after_days >= var.lake_nearline_after_days + 30
      error_message = "lake_coldline_after_days must be at least lake_nearline_after_days + 30 (NEARLINE's minimum storage duration)."
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.gcs, google_storage_bucket_iam_member.access_logs_writer]
}

# Usage logs (who read or wrote which object) of the three data buckets. A retention policy keeps
# every log object for access_log_retention_days: nobody, the platform included, can delete or
# replace it earlier.
resource "google_storage_bucket" "access_logs" {
  # checkov:skip=CKV_GCP_62:this is the log bucket itself; logging it would log its own log writes (and CKV_GCP_63 forbids logging to itself)
  # checkov:skip=CKV_GCP_78:a retention policy protects the logs; GCS does not allow object versioning together with a retention policy
  count = var.access_logs_enabled ? 1 : 0

  name          = "${var.project_id}-${var.name_prefix}-access-logs"
  location      = local.bucket_location
  storage_class = "STANDARD"
  force_destroy = false

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  retention_policy {
    retention_period = var.access_log_retention_days * 86400
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  lifecycle_rule {
    condition {
      age = var.access_log_retention_days + 1
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.gcs]
}

# Cloud Storage writes usage logs as this Google group.
resource "google_storage_bucket_iam_member" "access_logs_writer" {
  count = var.access_logs_enabled ? 1 : 0

  bucket = google_storage_bucket.access_logs[0].name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}
