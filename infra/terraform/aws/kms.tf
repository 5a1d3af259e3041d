# Three customer managed keys, so that who may decrypt what stays separable:
#   data  the platform's data at rest: S3 buckets, RDS (and Performance Insights), Redis,
#         Secrets Manager secrets, ECR images. Workloads get kms:Decrypt/GenerateDataKey on it
#         through their IAM roles (iam.tf); the key policy only delegates to IAM.
#   logs  CloudWatch Logs: the logs service itself encrypts, so the key policy must name it.
#   eks   envelope encryption of Kubernetes Secrets: only the cluster role uses it.
# Every key rotates its material yearly (old material stays to decrypt older data).

data "aws_iam_policy_document" "kms_account_admin" {
  # checkov:skip=CKV_AWS_109:this is a KMS key policy: Resource "*" can only mean the key it is attached to, and the account-root statement is AWS's default key policy, which lets IAM policies grant the key at all
  # checkov:skip=CKV_AWS_111:this is a KMS key policy: Resource "*" can only mean the key it is attached to; the account root delegates to the account's IAM policies, it grants nobody by itself
  # checkov:skip=CKV_AWS_356:this is a KMS key policy: a key policy's Resource must be "*" (the key itself), it cannot name an ARN
  statement {
    sid       = "AccountAdministersThroughIAM"
    effect    = "Allow"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
}

data "aws_iam_policy_document" "kms_logs" {
  source_policy_documents = [data.aws_iam_policy_document.kms_account_admin.json]

  statement {
    sid    = "CloudWatchLogsEncryptsThisAccountsLogGroups"
    effect = "Allow"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }
}

data "aws_iam_policy_document" "kms_eks" {
  # checkov:skip=CKV_AWS_111:this is a KMS key policy: Resource "*" can only mean this key, and the only write it grants is the EKS cluster role encrypting Kubernetes Secrets with it
  # checkov:skip=CKV_AWS_356:this is a KMS key policy: a key policy's Resource must be "*" (the key itself), it cannot name an ARN
  source_policy_documents = [data.aws_iam_policy_document.kms_account_admin.json]

  statement {
    sid       = "ClusterEncryptsSecrets"
    effect    = "Allow"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey", "kms:ListGrants"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.cluster.arn]
    }
  }

  statement {
    sid       = "ClusterGrantsToAWSResourcesOnly"
    effect    = "Allow"
    actions   = ["kms:CreateGrant"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.cluster.arn]
    }

    condition {
      test     = "Bool"
      variable = "kms:GrantIsForAWSResource"
      values   = ["true"]
    }
  }
}

# Description and policy of each key (policies above); alias/<name>-<key>.
locals {
  kms_keys = {
    data = {
      description = "platform data at rest (S3, RDS, ElastiCache, Secrets Manager, ECR)"
      policy      = data.aws_iam_policy_document.kms_account_admin.json
    }
    logs = {
      description = "CloudWatch log groups of the platform"
      policy      = data.aws_iam_policy_document.kms_logs.json
    }
    eks = {
      description = "envelope encryption of the EKS cluster's Kubernetes Secrets"
      policy      = data.aws_iam_policy_document.kms_eks.json
    }
  }
}

resource "aws_kms_key" "this" {
  for_each = local.kms_keys

  description             = "${var.name}: ${each.value.description}"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = each.value.policy
}

resource "aws_kms_alias" "this" {
  for_each = aws_kms_key.this

  name          = "alias/${var.name}-${each.key}"
  target_key_id = each.value.key_id
}
