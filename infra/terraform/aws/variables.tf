# --- platform ----------------------------------------------------------------------------------

variable "name" {
  description = "Name of this platform deployment: the prefix of every resource (buckets, cluster, database, roles). Lowercase letters, digits and hyphens, 3 to 20 characters, starting with a letter."
  type        = string
  default     = "mlops"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3 to 20 characters of lowercase letters, digits and hyphens, start with a letter and not end with a hyphen."
  }
}

variable "region" {
  description = "AWS region of the whole platform (one region: the cluster, its stores and the SageMaker endpoints sit together)."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region code such as us-east-1 or eu-west-3."
  }
}

variable "tags" {
  description = "Extra tags put on every resource (cost allocation, owner). The provider adds mlops:platform and mlops:managed-by."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.tags : length(k) <= 128 && length(v) <= 256 && !startswith(lower(k), "aws:")])
    error_message = "tag keys must be at most 128 characters and not start with aws:, values at most 256 characters."
  }
}

variable "kms_deletion_window_days" {
  description = "Days a scheduled KMS key deletion waits before the key (and every object, snapshot and secret it encrypts) is gone for good."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30 (AWS limits)."
  }
}

# --- Kubernetes names (mlops_assets/k8s.py) -----------------------------------------------------

variable "k8s_namespace" {
  description = "Namespace of the Dagster deployment, its run and step Jobs and MLflow (MLOPS_K8S_NAMESPACE)."
  type        = string
  default     = "mlops"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.k8s_namespace))
    error_message = "k8s_namespace must be a DNS-1123 label (lowercase letters, digits and hyphens, at most 63 characters)."
  }
}

variable "k8s_service_account" {
  description = "Service account of the Dagster code server, run workers and step pods (MLOPS_K8S_SERVICE_ACCOUNT); its IAM role is mlops_role_arn."
  type        = string
  default     = "mlops"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.k8s_service_account))
    error_message = "k8s_service_account must be a DNS-1123 subdomain."
  }
}

variable "mlflow_service_account" {
  description = "Service account of the MLflow tracking server (same namespace); its IAM role is mlflow_role_arn."
  type        = string
  default     = "mlflow"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.mlflow_service_account))
    error_message = "mlflow_service_account must be a DNS-1123 subdomain."
  }
}

# --- network -----------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR block of the VPC. Split into one public and one private subnet per availability zone; the private /19s hold the pods (VPC CNI gives every pod a VPC address)."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 18
    error_message = "vpc_cidr must be an IPv4 CIDR block between /16 and /18 (the subnets are carved from it)."
  }
}

variable "availability_zone_letters" {
  description = "Zones the platform spans, by letter within the region (a, b, c -> us-east-1a, us-east-1b, us-east-1c): 2 or 3 of them, for the subnets, node groups, RDS Multi-AZ and Redis replicas. Named, not \"the first N\", so the network never changes when AWS opens a zone."
  type        = list(string)
  default     = ["a", "b", "c"]

  validation {
    condition     = contains([2, 3], length(var.availability_zone_letters)) && length(distinct(var.availability_zone_letters)) == length(var.availability_zone_letters) && alltrue([for l in var.availability_zone_letters : can(regex("^[a-z]$", l))])
    error_message = "availability_zone_letters must be 2 or 3 distinct single letters, such as [\"a\", \"b\", \"c\"]."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper; the private subnets lose internet egress when its zone fails) instead of one per zone."
  type        = bool
  default     = false
}

variable "flow_logs_traffic_type" {
  description = "Which traffic the VPC flow logs record."
  type        = string
  default     = "ALL"

  validation {
    condition     = contains(["ACCEPT", "REJECT", "ALL"], var.flow_logs_traffic_type)
    error_message = "flow_logs_traffic_type must be ACCEPT, REJECT or ALL."
  }
}

# --- logs --------------------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of every CloudWatch log group of the platform (EKS control plane, VPC flow logs, PostgreSQL, Redis). One year by default: audit logs outlive most investigations."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch Logs' values: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

# --- object storage ----------------------------------------------------------------------------

variable "storage_prefix" {
  description = "Key prefix of the platform's files in the lake bucket (MLOPS_STORAGE_URI = s3://<lake bucket>/<prefix>): lake, quarantine, endpoint state, alerts."
  type        = string
  default     = "mlops"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{0,62}$", var.storage_prefix))
    error_message = "storage_prefix must be one path segment of lowercase letters, digits, dots, underscores and hyphens."
  }
}

variable "landing_expiration_days" {
  description = "Days a file stays in the landing bucket. The landing sensor copies every file into the lake (or the quarantine) within minutes, so the landing zone only needs to outlive a sensor outage."
  type        = number
  default     = 30

  validation {
    condition     = var.landing_expiration_days > 0
    error_message = "landing_expiration_days must be greater than 0."
  }
}

variable "lake_tiered_stages" {
  description = "Lake stages (folders under <prefix>/lake/) whose old daily partitions move to cheaper storage classes. Feature tables are left out on purpose: the Feast offline store reads a view's whole folder on every point-in-time join, and Glacier Instant Retrieval charges for every read."
  type        = list(string)
  default     = ["raw", "dataset", "dataset_rejected", "predictions", "requests", "served"]

  validation {
    condition     = alltrue([for s in var.lake_tiered_stages : can(regex("^[a-z0-9_]+$", s))]) && !contains(var.lake_tiered_stages, "features")
    error_message = "lake_tiered_stages must be stage folder names (lowercase letters, digits, underscores) and must not include features."
  }
}

variable "lake_transition_ia_days" {
  description = "Age in days after which a tiered lake partition moves to STANDARD_IA (S3 requires at least 30)."
  type        = number
  default     = 90

  validation {
    condition     = var.lake_transition_ia_days >= 30
    error_message = "lake_transition_ia_days must be at least 30 (S3's minimum for STANDARD_IA)."
  }
}

variable "lake_transition_glacier_ir_days" {
  description = "Age in days after which a tiered lake partition moves on to GLACIER_IR (millisecond reads, cheapest storage for data read a few times a year)."
  type        = number
  default     = 365

  validation {
    condition     = var.lake_transition_glacier_ir_days >= var.lake_transition_ia_days + 30
    error_message = "lake_transition_glacier_ir_days must be at least 30 days after lake_transition_ia_days (STANDARD_IA's minimum storage duration)."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days an overwritten or deleted object version is kept (every bucket is versioned: an overwrite or a delete can be undone within this window)."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days > 0
    error_message = "noncurrent_version_expiration_days must be greater than 0."
  }
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which the parts of an unfinished multipart upload (a step killed mid-write) are deleted."
  type        = number
  default     = 7

  validation {
    condition     = var.abort_incomplete_multipart_days > 0
    error_message = "abort_incomplete_multipart_days must be greater than 0."
  }
}

variable "access_log_expiration_days" {
  description = "Days the S3 server access logs of the platform's buckets are kept."
  type        = number
  default     = 365

  validation {
    condition     = var.access_log_expiration_days > 0
    error_message = "access_log_expiration_days must be greater than 0."
  }
}

# --- PostgreSQL (Dagster instance, MLflow backend store, Feast registry) ------------------------

variable "db_engine_version" {
  description = "PostgreSQL version of RDS: a major version (16) lets RDS apply minor versions in the maintenance window without a plan diff; a full version (16.9) pins it."
  type        = string
  default     = "16"

  validation {
    condition     = can(regex("^1[4-9](\\.[0-9]+)?$", var.db_engine_version))
    error_message = "db_engine_version must be a PostgreSQL major version from 14 to 19, optionally with a minor version (16 or 16.9)."
  }
}

variable "db_instance_class" {
  description = "RDS instance class. The Dagster event log is write-heavy while runs are going: prefer m-class instances for many concurrent runs."
  type        = string
  default     = "db.t4g.medium"

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.db_instance_class))
    error_message = "db_instance_class must be an RDS instance class such as db.t4g.medium or db.m7g.large."
  }
}

variable "db_allocated_storage_gb" {
  description = "Initial storage of the database in GiB (gp3)."
  type        = number
  default     = 50

  validation {
    condition     = var.db_allocated_storage_gb >= 20 && var.db_allocated_storage_gb <= 65536
    error_message = "db_allocated_storage_gb must be between 20 and 65536."
  }
}

variable "db_max_allocated_storage_gb" {
  description = "Ceiling of RDS storage autoscaling in GiB (the event log grows with every run)."
  type        = number
  default     = 500

  validation {
    condition     = var.db_max_allocated_storage_gb >= var.db_allocated_storage_gb && var.db_max_allocated_storage_gb <= 65536
    error_message = "db_max_allocated_storage_gb must be at least db_allocated_storage_gb and at most 65536."
  }
}

variable "db_username" {
  description = "Master user of the PostgreSQL server, owner of the dagster, mlflow and feast databases."
  type        = string
  default     = "mlops"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.db_username)) && !contains(["postgres", "rdsadmin", "admin", "root"], var.db_username)
    error_message = "db_username must start with a lowercase letter, use lowercase letters, digits and underscores, and not be a reserved name (postgres, rdsadmin, admin, root)."
  }
}

variable "db_multi_az" {
  description = "A synchronous standby in another zone: failover in about a minute instead of a restore from backup."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery window)."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 7 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be between 7 and 35."
  }
}

variable "db_monitoring_interval" {
  description = "Seconds between RDS Enhanced Monitoring samples (operating-system metrics of the instance)."
  type        = number
  default     = 60

  validation {
    condition     = contains([1, 5, 10, 15, 30, 60], var.db_monitoring_interval)
    error_message = "db_monitoring_interval must be one of 1, 5, 10, 15, 30, 60."
  }
}

variable "db_performance_insights_retention_days" {
  description = "Days of Performance Insights history (7 is free; longer must be a multiple of 31, up to 731)."
  type        = number
  default     = 7

  validation {
    condition     = contains([7, 731], var.db_performance_insights_retention_days) || (var.db_performance_insights_retention_days % 31 == 0 && var.db_performance_insights_retention_days <= 713)
    error_message = "db_performance_insights_retention_days must be 7, 731 or a multiple of 31 up to 713."
  }
}

variable "db_log_min_duration_statement_ms" {
  description = "Statements slower than this many milliseconds are written to the PostgreSQL log (CloudWatch)."
  type        = number
  default     = 1000

  validation {
    condition     = var.db_log_min_duration_statement_ms >= 0
    error_message = "db_log_min_duration_statement_ms must be 0 or more (0 logs every statement)."
  }
}

# --- Redis (Feast online store) -----------------------------------------------------------------

variable "redis_engine_version" {
  description = "Redis OSS version of the ElastiCache replication group."
  type        = string
  default     = "7.1"

  validation {
    condition     = can(regex("^7\\.[0-9]+$", var.redis_engine_version))
    error_message = "redis_engine_version must be a Redis 7 version such as 7.1 (the parameter group family is redis7)."
  }
}

variable "redis_node_type" {
  description = "ElastiCache node type. The online store holds the latest feature row per entity: size it on entities x features."
  type        = string
  default     = "cache.t4g.small"

  validation {
    condition     = can(regex("^cache\\.[a-z0-9]+\\.[a-z0-9]+$", var.redis_node_type))
    error_message = "redis_node_type must be an ElastiCache node type such as cache.t4g.small or cache.r7g.large."
  }
}

variable "redis_num_cache_clusters" {
  description = "Nodes of the replication group: one primary and the rest read replicas in other zones."
  type        = number
  default     = 2

  validation {
    condition     = var.redis_num_cache_clusters >= 1 && var.redis_num_cache_clusters <= 6
    error_message = "redis_num_cache_clusters must be between 1 and 6."
  }
}

variable "redis_automatic_failover" {
  description = "Promote a replica when the primary fails (Multi-AZ). Needs at least 2 nodes."
  type        = bool
  default     = true

  validation {
    condition     = !var.redis_automatic_failover || var.redis_num_cache_clusters >= 2
    error_message = "redis_automatic_failover needs redis_num_cache_clusters >= 2."
  }
}

variable "redis_snapshot_retention_days" {
  description = "Days of daily Redis snapshots. The online store can always be rebuilt by materializing from the lake; a snapshot only makes that faster."
  type        = number
  default     = 7

  validation {
    condition     = var.redis_snapshot_retention_days >= 1 && var.redis_snapshot_retention_days <= 35
    error_message = "redis_snapshot_retention_days must be between 1 and 35."
  }
}

# --- EKS ---------------------------------------------------------------------------------------

variable "eks_version" {
  description = "Kubernetes version of the EKS cluster (a version in EKS standard support: the cluster's upgrade policy refuses extended support)."
  type        = string
  default     = "1.34"

  validation {
    condition     = can(regex("^1\\.(2[89]|3[0-9])$", var.eks_version))
    error_message = "eks_version must be a Kubernetes minor version such as 1.34."
  }
}

variable "eks_public_endpoint" {
  description = "Open the cluster's API on a public endpoint, reachable only from eks_public_access_cidrs. Off: the API is private, reachable from the VPC (a bastion, a VPN, a peered network or CI runners inside it)."
  type        = bool
  default     = false
}

variable "eks_public_access_cidrs" {
  description = "CIDR blocks allowed to reach the cluster's public API endpoint (office, VPN egress, CI runners) when eks_public_endpoint is on."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.eks_public_access_cidrs : can(cidrhost(c, 0)) && !endswith(c, "/0")])
    error_message = "eks_public_access_cidrs must be IPv4 CIDR blocks, none of them open to the whole internet (/0)."
  }

  validation {
    condition     = !var.eks_public_endpoint || length(var.eks_public_access_cidrs) > 0
    error_message = "eks_public_endpoint needs at least one CIDR block in eks_public_access_cidrs."
  }
}

variable "eks_admin_principal_arns" {
  description = "IAM users or roles given cluster-admin on the cluster through EKS access entries (the identity running Terraform gets it at creation)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.eks_admin_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/.+$", a))])
    error_message = "eks_admin_principal_arns must be IAM role or user ARNs."
  }
}

variable "node_disk_size_gb" {
  description = "Root volume of every node in GiB: container images (the platform image carries Dagster, MLflow, Feast and scikit-learn) and emptyDir scratch of the steps."
  type        = number
  default     = 100

  validation {
    condition     = var.node_disk_size_gb >= 40 && var.node_disk_size_gb <= 2000
    error_message = "node_disk_size_gb must be between 40 and 2000."
  }
}

variable "system_instance_types" {
  description = "On-demand instance types of the system node group (Dagster webserver, daemon, code server, run workers, MLflow, cluster add-ons)."
  type        = list(string)
  default     = ["m6i.large", "m7i.large", "m5.large"]

  validation {
    condition     = length(var.system_instance_types) > 0 && alltrue([for t in var.system_instance_types : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "system_instance_types must be a non-empty list of EC2 instance types."
  }
}

variable "system_node_count" {
  description = "Nodes of the system node group (min = desired); it grows to system_node_max when the cluster autoscaler needs it."
  type        = number
  default     = 2

  validation {
    condition     = var.system_node_count >= 1 && var.system_node_count <= 10
    error_message = "system_node_count must be between 1 and 10."
  }
}

variable "system_node_max" {
  description = "Largest size of the system node group."
  type        = number
  default     = 4

  validation {
    condition     = var.system_node_max >= var.system_node_count && var.system_node_max <= 20
    error_message = "system_node_max must be at least system_node_count and at most 20."
  }
}

variable "training_instance_types" {
  description = "Spot instance types of the training node group. Several types of the same size spread the request over more spot pools, so a reclaimed pool does not stop training."
  type        = list(string)
  default     = ["m6i.2xlarge", "m7i.2xlarge", "m6a.2xlarge", "m5.2xlarge", "m5a.2xlarge"]

  validation {
    condition     = length(var.training_instance_types) >= 2 && alltrue([for t in var.training_instance_types : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "training_instance_types must list at least two EC2 instance types (spot diversification)."
  }
}

variable "training_node_max" {
  description = "Largest size of the spot training node group (it scales from 0 when training steps are pending)."
  type        = number
  default     = 10

  validation {
    condition     = var.training_node_max >= 1 && var.training_node_max <= 100
    error_message = "training_node_max must be between 1 and 100."
  }
}

variable "gpu_node_group_enabled" {
  description = "Create the GPU node group (for specs whose compute.train asks for GPUs). It scales from 0, so it costs nothing while idle; the NVIDIA device plugin must run on the cluster."
  type        = bool
  default     = false
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group."
  type        = list(string)
  default     = ["g5.xlarge", "g5.2xlarge", "g6.xlarge"]

  validation {
    condition     = length(var.gpu_instance_types) > 0 && alltrue([for t in var.gpu_instance_types : can(regex("^[gp][0-9][a-z0-9]*\\.[a-z0-9]+$", t))])
    error_message = "gpu_instance_types must be a non-empty list of GPU instance types (g or p families)."
  }
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the GPU node group. SPOT nodes also carry the spot taint and label, so only steps that accept spot land there."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "gpu_node_max" {
  description = "Largest size of the GPU node group."
  type        = number
  default     = 2

  validation {
    condition     = var.gpu_node_max >= 1 && var.gpu_node_max <= 50
    error_message = "gpu_node_max must be between 1 and 50."
  }
}

# --- images ------------------------------------------------------------------------------------

variable "ecr_repository_prefix" {
  description = "Namespace of the two ECR repositories (<prefix>/mlops-assets). Empty: the repositories are named mlops-assets and mlops-serving."
  type        = string
  default     = ""

  validation {
    condition     = var.ecr_repository_prefix == "" || can(regex("^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$", var.ecr_repository_prefix))
    error_message = "ecr_repository_prefix must be empty or a lowercase ECR namespace such as team/mlops."
  }
}

variable "ecr_images_kept" {
  description = "Images each ECR repository keeps (the newest); older ones are expired. Keep enough to roll back endpoints that still serve an older image."
  type        = number
  default     = 50

  validation {
    condition     = var.ecr_images_kept >= 1 && var.ecr_images_kept <= 1000
    error_message = "ecr_images_kept must be between 1 and 1000."
  }
}

# --- secrets -----------------------------------------------------------------------------------

variable "secret_recovery_window_days" {
  description = "Days a deleted Secrets Manager secret can still be restored."
  type        = number
  default     = 30

  validation {
    condition     = var.secret_recovery_window_days >= 7 && var.secret_recovery_window_days <= 30
    error_message = "secret_recovery_window_days must be between 7 and 30."
  }
}

# --- SageMaker -----------------------------------------------------------------------------------

variable "sagemaker_deployments_enabled" {
  description = "Let the Dagster service account deploy endpoints of the sagemaker target (create models, endpoint configs and endpoints named after the specs, and pass the SageMaker execution role)."
  type        = bool
  default     = true
}
