# Inputs of the GCP platform. Only project_id is required; every default is what a production
# deployment of mlops_assets should start from.

# --- project and naming ---------------------------------------------------------------------------

variable "project_id" {
  description = "Google Cloud project that holds the platform (also the GOOGLE_CLOUD_PROJECT output)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project id: 6-30 characters, lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region of the cluster, database, Redis, registry and (by default) the buckets; keeping them together avoids cross-region egress."
  type        = string
  default     = "europe-west1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1 or us-central1."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name (buckets are named <project_id>-<name_prefix>-<purpose>, globally unique because project ids are)."
  type        = string
  default     = "mlops"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-16 characters: lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "labels" {
  description = "Labels added to every resource (cost allocation, ownership)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "Label keys must start with a lowercase letter; keys and values may hold lowercase letters, digits, '_' and '-' (at most 63 characters)."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the GKE cluster and the Cloud SQL instance (turn off only to tear an environment down on purpose)."
  type        = bool
  default     = true
}

# --- encryption -----------------------------------------------------------------------------------

variable "kms_key_name" {
  description = "Cloud KMS key (projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>) for the buckets and the Artifact Registry repository; null keeps Google-managed encryption. The key's location must match bucket_location and region."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.kms_key_name))
    error_message = "kms_key_name must be null or a full key name projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>."
  }
}

variable "kms_grant_service_agents" {
  description = "With kms_key_name set: grant the Cloud Storage and Artifact Registry service agents encrypt/decrypt on the key. Set false when the key's owners grant it themselves (the applying identity then needs no rights on the key)."
  type        = bool
  default     = true
}

# --- object storage -------------------------------------------------------------------------------

variable "bucket_location" {
  description = "Location of the buckets (a region, dual-region or multi-region); null = region."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_location == null || can(regex("^[A-Za-z0-9-]+$", var.bucket_location))
    error_message = "bucket_location must be a GCS location such as europe-west1, EU or EUR4."
  }
}

variable "landing_expiration_days" {
  description = "Days a file stays in the landing bucket before it is deleted (ingested files are already in the lake; refused ones are in quarantine)."
  type        = number
  default     = 30

  validation {
    condition     = var.landing_expiration_days >= 1 && var.landing_expiration_days == floor(var.landing_expiration_days)
    error_message = "landing_expiration_days must be a whole number of days, at least 1."
  }
}

variable "lake_nearline_after_days" {
  description = "Age in days after which lake objects move to NEARLINE (old partitions, old predictions). Every read of NEARLINE or COLDLINE data is billed per GB: raise both ages when retraining reads a long history of features often."
  type        = number
  default     = 30

  validation {
    condition     = var.lake_nearline_after_days >= 1 && var.lake_nearline_after_days == floor(var.lake_nearline_after_days)
    error_message = "lake_nearline_after_days must be a whole number of days, at least 1."
  }
}

variable "lake_coldline_after_days" {
  description = "Age in days after which lake objects move to COLDLINE; must be at least lake_nearline_after_days + 30 (NEARLINE's minimum storage duration)."
  type        = number
  default     = 180

  validation {
    condition     = var.lake_coldline_after_days >= 31 && var.lake_coldline_after_days == floor(var.lake_coldline_after_days)
    error_message = "lake_coldline_after_days must be a whole number of days, at least 31."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days a replaced or deleted object version is kept (recovery from a bad write or delete) before it is removed."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1 && var.noncurrent_version_retention_days == floor(var.noncurrent_version_retention_days)
    error_message = "noncurrent_version_retention_days must be a whole number of days, at least 1."
  }
}

variable "noncurrent_versions_to_keep" {
  description = "Newer versions an object keeps; older noncurrent versions are removed even before noncurrent_version_retention_days (state files are rewritten often)."
  type        = number
  default     = 5

  validation {
    condition     = var.noncurrent_versions_to_keep >= 1 && var.noncurrent_versions_to_keep == floor(var.noncurrent_versions_to_keep)
    error_message = "noncurrent_versions_to_keep must be a whole number, at least 1."
  }
}

variable "access_logs_enabled" {
  description = "Write Cloud Storage usage logs of the data buckets to a dedicated log bucket. Needs cloud-storage-analytics@google.com to be allowed as a member (an organization's domain-restricted-sharing policy may forbid it)."
  type        = bool
  default     = true
}

variable "access_log_retention_days" {
  description = "Days the bucket access logs are kept; they cannot be deleted or replaced earlier (retention policy)."
  type        = number
  default     = 365

  validation {
    condition     = var.access_log_retention_days >= 1 && var.access_log_retention_days <= 3650 && var.access_log_retention_days == floor(var.access_log_retention_days)
    error_message = "access_log_retention_days must be a whole number of days between 1 and 3650."
  }
}

# --- network --------------------------------------------------------------------------------------

variable "subnet_cidr" {
  description = "Primary range of the cluster subnet (node addresses)."
  type        = string
  default     = "10.0.0.0/20"

  validation {
    condition     = can(cidrhost(var.subnet_cidr, 0)) && can(regex("/([0-9]|1[0-9]|2[0-4])$", var.subnet_cidr))
    error_message = "subnet_cidr must be an IPv4 CIDR block of /24 or larger."
  }
}

variable "pods_cidr" {
  description = "Secondary range for pod addresses (each node takes a /24 with the default 110 pods per node)."
  type        = string
  default     = "10.4.0.0/14"

  validation {
    condition     = can(cidrhost(var.pods_cidr, 0)) && can(regex("/([0-9]|1[0-9]|2[0-1])$", var.pods_cidr))
    error_message = "pods_cidr must be an IPv4 CIDR block of /21 or larger."
  }
}

variable "services_cidr" {
  description = "Secondary range for Kubernetes Service addresses."
  type        = string
  default     = "10.8.0.0/20"

  validation {
    condition     = can(cidrhost(var.services_cidr, 0)) && can(regex("/([0-9]|1[0-9]|2[0-7])$", var.services_cidr))
    error_message = "services_cidr must be an IPv4 CIDR block of /27 or larger."
  }
}

variable "master_ipv4_cidr" {
  description = "The /28 the GKE control plane uses inside the VPC (private cluster)."
  type        = string
  default     = "172.16.0.0/28"

  validation {
    condition     = can(cidrhost(var.master_ipv4_cidr, 0)) && endswith(var.master_ipv4_cidr, "/28")
    error_message = "master_ipv4_cidr must be an IPv4 /28 block."
  }
}

variable "private_service_access_cidr" {
  description = "Range reserved for Google-managed services peered into the VPC (Cloud SQL and Memorystore take their addresses from it)."
  type        = string
  default     = "10.16.0.0/20"

  validation {
    condition     = can(cidrhost(var.private_service_access_cidr, 0)) && can(regex("/([0-9]|1[0-9]|2[0-4])$", var.private_service_access_cidr))
    error_message = "private_service_access_cidr must be an IPv4 CIDR block of /24 or larger."
  }
}

# --- GKE ------------------------------------------------------------------------------------------

variable "cluster_zone" {
  description = "Zone of a zonal cluster (cheaper, one control-plane replica); null = a regional cluster across the region's zones."
  type        = string
  default     = null

  validation {
    condition     = var.cluster_zone == null || can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", var.cluster_zone))
    error_message = "cluster_zone must be null or a zone such as europe-west1-b."
  }
}

variable "release_channel" {
  description = "GKE release channel: the control plane and nodes are upgraded automatically within it."
  type        = string
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE", "EXTENDED"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR, STABLE or EXTENDED."
  }
}

variable "master_authorized_networks" {
  description = "CIDR blocks allowed to reach the public control-plane endpoint (operators, CI). Empty: only the VPC reaches it."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = []

  validation {
    condition     = alltrue([for n in var.master_authorized_networks : can(cidrhost(n.cidr_block, 0)) && !endswith(n.cidr_block, "/0")])
    error_message = "Each master_authorized_networks cidr_block must be a valid IPv4 CIDR block other than a /0."
  }
}

variable "private_endpoint" {
  description = "Serve the control plane on its private address only (then kubectl and CI must run from the VPC or a peered network)."
  type        = bool
  default     = false
}

variable "rbac_security_group" {
  description = "Google Group gke-security-groups@<your domain> whose nested groups may be bound in Kubernetes RBAC; null = no Google Groups for RBAC."
  type        = string
  default     = null

  validation {
    condition     = var.rbac_security_group == null || can(regex("^gke-security-groups@[a-z0-9.-]+$", var.rbac_security_group))
    error_message = "rbac_security_group must be null or gke-security-groups@<domain>."
  }
}

variable "maintenance_start_time" {
  description = "Start (UTC, HH:MM) of GKE's daily four-hour maintenance window."
  type        = string
  default     = "03:00"

  validation {
    condition     = can(regex("^([01][0-9]|2[0-3]):[0-5][0-9]$", var.maintenance_start_time))
    error_message = "maintenance_start_time must be HH:MM (UTC)."
  }
}

variable "system_machine_type" {
  description = "Machine type of the system pool (Dagster webserver, daemon, code server, MLflow, model servers, run workers)."
  type        = string
  default     = "e2-standard-4"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]*-[a-z0-9-]+$", var.system_machine_type))
    error_message = "system_machine_type must be a Compute Engine machine type such as e2-standard-4 or n2-highmem-8."
  }
}

variable "system_min_nodes" {
  description = "Minimum nodes per zone of the system pool."
  type        = number
  default     = 1

  validation {
    condition     = var.system_min_nodes >= 1 && var.system_min_nodes == floor(var.system_min_nodes)
    error_message = "system_min_nodes must be a whole number, at least 1 (the system pool runs the always-on services)."
  }
}

variable "system_max_nodes" {
  description = "Maximum nodes per zone of the system pool."
  type        = number
  default     = 3

  validation {
    condition     = var.system_max_nodes >= 1 && var.system_max_nodes <= 100 && var.system_max_nodes == floor(var.system_max_nodes)
    error_message = "system_max_nodes must be a whole number between 1 and 100."
  }
}

variable "training_machine_type" {
  description = "Machine type of the spot training pool (steps whose size says spot: true; training by default)."
  type        = string
  default     = "n2-standard-8"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]*-[a-z0-9-]+$", var.training_machine_type))
    error_message = "training_machine_type must be a Compute Engine machine type such as e2-standard-4 or n2-highmem-8."
  }
}

variable "training_max_nodes" {
  description = "Maximum nodes of the training pool across all its zones (it scales from 0)."
  type        = number
  default     = 10

  validation {
    condition     = var.training_max_nodes >= 1 && var.training_max_nodes <= 1000 && var.training_max_nodes == floor(var.training_max_nodes)
    error_message = "training_max_nodes must be a whole number between 1 and 1000."
  }
}

variable "node_disk_size_gb" {
  description = "Boot disk size of every node (images and emptyDir scratch space of steps)."
  type        = number
  default     = 100

  validation {
    condition     = var.node_disk_size_gb >= 30 && var.node_disk_size_gb == floor(var.node_disk_size_gb)
    error_message = "node_disk_size_gb must be a whole number of GB, at least 30."
  }
}

variable "gpu_node_pool" {
  description = "Optional GPU pool for steps that ask for gpu: N (label mlops/gpu=true; GKE taints GPU nodes nvidia.com/gpu). null = no GPU pool. zones: where the accelerator is offered (null = the cluster's zones)."
  type = object({
    machine_type      = string
    accelerator_type  = string
    accelerator_count = number
    max_nodes         = number
    spot              = optional(bool, true)
    zones             = optional(list(string))
  })
  default = null

  validation {
    condition     = var.gpu_node_pool == null || try(var.gpu_node_pool.accelerator_count >= 1 && var.gpu_node_pool.max_nodes >= 1, false)
    error_message = "gpu_node_pool needs accelerator_count >= 1 and max_nodes >= 1."
  }
}

# --- Cloud SQL ------------------------------------------------------------------------------------

variable "postgres_version" {
  description = "Cloud SQL PostgreSQL major version of the Dagster, MLflow and Feast databases."
  type        = string
  default     = "POSTGRES_16"

  validation {
    condition     = can(regex("^POSTGRES_(1[4-9])$", var.postgres_version))
    error_message = "postgres_version must be POSTGRES_14 or later (e.g. POSTGRES_16)."
  }
}

variable "db_tier" {
  description = "Cloud SQL machine tier (db-custom-<vCPU>-<MiB> for the ENTERPRISE edition)."
  type        = string
  default     = "db-custom-2-7680"

  validation {
    condition     = can(regex("^db-", var.db_tier))
    error_message = "db_tier must be a Cloud SQL tier such as db-custom-2-7680."
  }
}

variable "db_edition" {
  description = "Cloud SQL edition: ENTERPRISE or ENTERPRISE_PLUS (which needs a db-perf-optimized-N-* tier)."
  type        = string
  default     = "ENTERPRISE"

  validation {
    condition     = contains(["ENTERPRISE", "ENTERPRISE_PLUS"], var.db_edition)
    error_message = "db_edition must be ENTERPRISE or ENTERPRISE_PLUS."
  }
}

variable "db_availability_type" {
  description = "REGIONAL: a standby in a second zone with automatic failover; ZONAL: one instance (cheaper, no failover)."
  type        = string
  default     = "REGIONAL"

  validation {
    condition     = contains(["REGIONAL", "ZONAL"], var.db_availability_type)
    error_message = "db_availability_type must be REGIONAL or ZONAL."
  }
}

variable "db_disk_size_gb" {
  description = "Initial disk size of the database in GB (it grows automatically up to db_disk_autoresize_limit_gb)."
  type        = number
  default     = 50

  validation {
    condition     = var.db_disk_size_gb >= 10 && var.db_disk_size_gb == floor(var.db_disk_size_gb)
    error_message = "db_disk_size_gb must be a whole number of GB, at least 10."
  }
}

variable "db_disk_autoresize_limit_gb" {
  description = "Upper bound of the automatic disk growth in GB (0 = no limit)."
  type        = number
  default     = 500

  validation {
    condition     = var.db_disk_autoresize_limit_gb >= 0 && var.db_disk_autoresize_limit_gb == floor(var.db_disk_autoresize_limit_gb)
    error_message = "db_disk_autoresize_limit_gb must be a whole number of GB (0 = no limit)."
  }
}

variable "db_backup_start_time" {
  description = "Start (UTC, HH:MM) of the daily automated backup."
  type        = string
  default     = "02:00"

  validation {
    condition     = can(regex("^([01][0-9]|2[0-3]):[0-5][0-9]$", var.db_backup_start_time))
    error_message = "db_backup_start_time must be HH:MM (UTC)."
  }
}

variable "db_backups_retained" {
  description = "Number of daily automated backups kept."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backups_retained >= 1 && var.db_backups_retained <= 365 && var.db_backups_retained == floor(var.db_backups_retained)
    error_message = "db_backups_retained must be a whole number between 1 and 365."
  }
}

variable "db_transaction_log_retention_days" {
  description = "Days of write-ahead log kept for point-in-time recovery (1-7 for ENTERPRISE, up to 35 for ENTERPRISE_PLUS)."
  type        = number
  default     = 7

  validation {
    condition     = var.db_transaction_log_retention_days >= 1 && var.db_transaction_log_retention_days <= 35 && var.db_transaction_log_retention_days == floor(var.db_transaction_log_retention_days)
    error_message = "db_transaction_log_retention_days must be a whole number between 1 and 35."
  }
}

variable "db_username" {
  description = "PostgreSQL user of the platform (owner of the dagster, mlflow and feast databases)."
  type        = string
  default     = "mlops"

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_]{0,62}$", var.db_username)) && !contains(["postgres", "cloudsqlsuperuser", "cloudsqladmin"], var.db_username)
    error_message = "db_username must be a lowercase PostgreSQL identifier and not a reserved Cloud SQL role (postgres, cloudsqlsuperuser, cloudsqladmin)."
  }
}

# --- Memorystore ----------------------------------------------------------------------------------

variable "redis_tier" {
  description = "Memorystore tier of Feast's online store: STANDARD_HA (replica with automatic failover) or BASIC (single node)."
  type        = string
  default     = "STANDARD_HA"

  validation {
    condition     = contains(["BASIC", "STANDARD_HA"], var.redis_tier)
    error_message = "redis_tier must be BASIC or STANDARD_HA."
  }
}

variable "redis_memory_size_gb" {
  description = "Memory of the Redis instance in GiB (the online features of every spec's entities)."
  type        = number
  default     = 5

  validation {
    condition     = var.redis_memory_size_gb >= 1 && var.redis_memory_size_gb <= 300 && var.redis_memory_size_gb == floor(var.redis_memory_size_gb)
    error_message = "redis_memory_size_gb must be a whole number between 1 and 300."
  }
}

variable "redis_version" {
  description = "Memorystore Redis version."
  type        = string
  default     = "REDIS_7_2"

  validation {
    condition     = can(regex("^REDIS_[0-9]+(_[0-9]+)?$", var.redis_version))
    error_message = "redis_version must look like REDIS_7_2."
  }
}

# --- Artifact Registry ----------------------------------------------------------------------------

variable "immutable_image_tags" {
  description = "Refuse to move an existing image tag, so a deployed tag always means the same image. CI pushes one tag per commit SHA; turn off only if you push a moving tag such as latest."
  type        = bool
  default     = true
}

variable "image_versions_to_keep" {
  description = "Most recent versions of each image kept by the registry's cleanup policy."
  type        = number
  default     = 30

  validation {
    condition     = var.image_versions_to_keep >= 1 && var.image_versions_to_keep == floor(var.image_versions_to_keep)
    error_message = "image_versions_to_keep must be a whole number, at least 1."
  }
}

variable "untagged_image_retention_days" {
  description = "Days an untagged image (a tag moved away from it) is kept before the cleanup policy deletes it (unless among the image_versions_to_keep most recent)."
  type        = number
  default     = 14

  validation {
    condition     = var.untagged_image_retention_days >= 1 && var.untagged_image_retention_days == floor(var.untagged_image_retention_days)
    error_message = "untagged_image_retention_days must be a whole number of days, at least 1."
  }
}

# --- Kubernetes names and secrets -----------------------------------------------------------------

variable "k8s_namespace" {
  description = "Namespace of the platform (MLOPS_K8S_NAMESPACE; mlops_assets.k8s default)."
  type        = string
  default     = "mlops"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.k8s_namespace))
    error_message = "k8s_namespace must be a DNS-1123 label."
  }
}

variable "k8s_service_account" {
  description = "Kubernetes service account of Dagster runs, steps and model servers (MLOPS_K8S_SERVICE_ACCOUNT), bound to the platform's Google service account."
  type        = string
  default     = "mlops"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.k8s_service_account))
    error_message = "k8s_service_account must be a DNS-1123 subdomain."
  }
}

variable "mlflow_k8s_service_account" {
  description = "Kubernetes service account of the MLflow tracking server, bound to the MLflow Google service account."
  type        = string
  default     = "mlflow"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.mlflow_k8s_service_account))
    error_message = "mlflow_k8s_service_account must be a DNS-1123 subdomain."
  }
}

variable "secret_replica_locations" {
  description = "Regions Secret Manager replicates the platform's secrets to; empty = automatic replication (Google chooses)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for l in var.secret_replica_locations : can(regex("^[a-z]+-[a-z]+[0-9]+$", l))])
    error_message = "secret_replica_locations must hold regions such as europe-west1."
  }
}
