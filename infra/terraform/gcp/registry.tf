# Artifact Registry: one Docker repository "mlops" holding the two images of infra/Dockerfile,
#   mlops-assets   the code location (default target): Dagster user code, runs and steps
#   mlops-serving  the model server (--target serving)
# Nodes pull with their own service account (reader on this repository only); CI pushes with its
# own identity, granted outside this tree.

# The project number names the Artifact Registry service agent.
data "google_project" "this" {
  count = local.grant_kms ? 1 : 0

  project_id = var.project_id
}

# The Artifact Registry service agent encrypts with the key on the repository's behalf.
resource "google_kms_crypto_key_iam_member" "artifact_registry" {
  count = local.grant_kms ? 1 : 0

  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:service-${data.google_project.this[0].number}@gcp-sa-artifactregistry.iam.gserviceaccount.com"

  depends_on = [google_project_service.enabled]
}

resource "google_artifact_registry_repository" "mlops" {
  repository_id = "mlops"
  location      = var.region
  format        = "DOCKER"
  description   = "mlops_assets images: mlops-assets (code location) and mlops-serving (model server)"
  kms_key_name  = var.kms_key_name

  docker_config {
    immutable_tags = var.immutable_image_tags
  }

  # Keep the most recent versions of each image; delete images no tag points at any more.
  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "keep-recent-versions"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.image_versions_to_keep
    }
  }

  cleanup_policies {
    id     = "delete-old-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "${var.untagged_image_retention_days * 86400}s"
    }
  }

  depends_on = [
    google_project_service.enabled,
    google_kms_crypto_key_iam_member.artifact_registry,
  ]
}
