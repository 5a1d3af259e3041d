# Terraform and provider pins. The state holds the database password, the Redis AUTH string and the
# admin token: keep it in a GCS bucket with versioning and restricted access (README: "State").
terraform {
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.20"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }

  # Partial configuration: bucket and prefix are given at `terraform init -backend-config=...`,
  # so one copy of this tree serves every environment (README: "State").
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region

  # Every resource with a top-level `labels` field gets these (buckets, secrets, Redis, registry).
  default_labels = local.labels
}
