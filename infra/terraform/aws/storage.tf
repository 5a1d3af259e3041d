# Four buckets:
#   landing    files as producers drop them (MLOPS_LANDING_URI = s3://<landing>/landing); the landing
#              sensor copies each into the lake or the quarantine, so files expire here after a while
#   lake       the platform's files (MLOPS_STORAGE_URI = s3://<lake>/<prefix>: lake, quarantine,
#              endpoint state and audit history, alerts, the prediction store) and the Dagster IO
#              manager's outputs (MLOPS_IO_BUCKET, prefix dagster-io/)
#   artifacts  MLflow artifacts (MLFLOW_ARTIFACT_URI = s3://<artifacts>/mlflow) and the model
#              archives the sagemaker target uploads (s3://<artifacts>/sagemaker)
#   access-logs  S3 server access logs of the three
# All versioned (an overwrite or delete can be undone for noncurrent_version_expiration_days),
# encrypted with the data key, private, TLS 1.2+ only, ACLs disabled.

locals {
  data_buckets = {
    landing   = "${var.name}-landing-${local.bucket_suffix}"
    lake      = "${var.name}-lake-${local.bucket_suffix}"
    artifacts = "${var.name}-artifacts-${local.bucket_suffix}"
  }
  access_logs_bucket = "${var.name}-access-logs-${local.bucket_suffix}"

  landing_prefix   = "landing"
  mlflow_prefix    = "mlflow"
  sagemaker_prefix = "sagemaker"
}

resource "aws_s3_bucket" "data" {
  # checkov:skip=CKV_AWS_144:cross-region replication doubles the storage bill and needs a second region's key and buckets; the platform's durability comes from versioning plus S3's multi-zone storage, and the lake can be rebuilt from the landing files and the model registry
  for_each = local.data_buckets

  bucket = each.value

  tags = { "mlops:bucket" = each.key }
}

resource "aws_s3_bucket_ownership_controls" "data" {
  for_each = local.data_buckets

  bucket = aws_s3_bucket.data[each.key].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  for_each = local.data_buckets

  bucket                  = aws_s3_bucket.data[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "data" {
  for_each = local.data_buckets

  bucket = aws_s3_bucket.data[each.key].id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  for_each = local.data_buckets

  bucket = aws_s3_bucket.data[each.key].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this["data"].arn
    }
    # One data key per bucket instead of a KMS call per object: the lake writes many small files.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "data" {
  for_each = local.data_buckets

  bucket        = aws_s3_bucket.data[each.key].id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "${each.key}/"

  target_object_key_format {
    partitioned_prefix {
      partition_date_source = "EventTime"
    }
  }

  depends_on = [aws_s3_bucket_policy.access_logs]
}

# Object events go to EventBridge (free to emit): an event-driven landing sensor, audit rules or
# replication tooling can subscribe without touching the buckets.
resource "aws_s3_bucket_notification" "data" {
  for_each = local.data_buckets

  bucket      = aws_s3_bucket.data[each.key].id
  eventbridge = true
}

data "aws_iam_policy_document" "bucket_tls_only" {
  for_each = local.data_buckets

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.data[each.key].arn,
      "${aws_s3_bucket.data[each.key].arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid     = "DenyTLSBelow12"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.data[each.key].arn,
      "${aws_s3_bucket.data[each.key].arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  for_each = local.data_buckets

  bucket = aws_s3_bucket.data[each.key].id
  policy = data.aws_iam_policy_document.bucket_tls_only[each.key].json

  depends_on = [aws_s3_bucket_public_access_block.data]
}

# --- lifecycle ---------------------------------------------------------------------------------

# What expires or moves, bucket by bucket, besides what every bucket cleans up (rule
# expire-old-versions: noncurrent versions, expired delete markers, abandoned multipart uploads):
# expire_after_days holds the age at which current objects expire ([] where they never do).
locals {
  data_bucket_lifecycle = {
    # The landing sensor copies each file into the lake or the quarantine: what stays here is a copy.
    landing = { expire_after_days = [var.landing_expiration_days], tiered_prefixes = {} }
    # A daily partition is written once (and rewritten only by a backfill), then read less and less:
    # old ones move to STANDARD_IA, then to Glacier Instant Retrieval (still millisecond reads).
    lake = {
      expire_after_days = []
      tiered_prefixes   = { for stage in var.lake_tiered_stages : stage => "${var.storage_prefix}/lake/${stage}/" }
    }
    # Model artifacts stay in STANDARD: the registry, the serving containers and SageMaker read any
    # version at any time (a rollback serves an old one).
    artifacts = { expire_after_days = [], tiered_prefixes = {} }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  for_each = local.data_buckets

  bucket = aws_s3_bucket.data[each.key].id

  dynamic "rule" {
    for_each = local.data_bucket_lifecycle[each.key].expire_after_days

    content {
      id     = "expire-${each.key}-files"
      status = "Enabled"

      filter {}

      expiration {
        days = rule.value
      }
    }
  }

  dynamic "rule" {
    for_each = local.data_bucket_lifecycle[each.key].tiered_prefixes

    content {
      id     = "tier-${each.key}-${rule.key}"
      status = "Enabled"

      filter {
        prefix = rule.value
      }

      transition {
        days          = var.lake_transition_ia_days
        storage_class = "STANDARD_IA"
      }

      transition {
        days          = var.lake_transition_glacier_ir_days
        storage_class = "GLACIER_IR"
      }
    }
  }

  rule {
    id     = "expire-old-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }

    expiration {
      expired_object_delete_marker = true
    }
  }

  depends_on = [aws_s3_bucket_versioning.data]
}

# --- access logs -------------------------------------------------------------------------------

resource "aws_s3_bucket" "access_logs" {
  # checkov:skip=CKV_AWS_144:access logs are an audit trail of this region's buckets; replicating them is left to an organization-wide log archive
  # checkov:skip=CKV_AWS_145:S3 server access logging only delivers to buckets encrypted with SSE-S3 (AES256), not SSE-KMS
  # checkov:skip=CKV2_AWS_62:every access-log delivery would be an event; nothing subscribes to them
  bucket = local.access_logs_bucket

  tags = { "mlops:bucket" = "access-logs" }
}

resource "aws_s3_bucket_ownership_controls" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    id     = "expire-access-logs"
    status = "Enabled"

    filter {}

    expiration {
      days = var.access_log_expiration_days
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.access_logs]
}

data "aws_iam_policy_document" "access_logs" {
  statement {
    sid       = "S3ServerAccessLogsFromThePlatformsBuckets"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.access_logs.arn}/*"]

    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [for b in aws_s3_bucket.data : b.arn]
    }
  }

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.access_logs.arn,
      "${aws_s3_bucket.access_logs.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  policy = data.aws_iam_policy_document.access_logs.json

  depends_on = [aws_s3_bucket_public_access_block.access_logs]
}
