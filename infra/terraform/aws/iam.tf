# Workload identities, each allowed what its code does and nothing more:
#   mlops       system:serviceaccount:<ns>:<sa> (Dagster code server, run workers, steps):
#               lake read/write/delete, landing read/list/delete (the sensor moves files into the
#               lake or the quarantine), MLflow artifacts and SageMaker model archives read/write,
#               the platform's secrets, and (sagemaker_deployments_enabled) SageMaker endpoints
#   mlflow      system:serviceaccount:<ns>:mlflow (tracking server): MLflow artifacts only
#   sagemaker   the SageMaker execution role of the endpoints: read the artifacts, pull the serving
#               image, write its logs and its prediction log (lake/requests, lake/served)
#   vpc-cni, cluster-autoscaler   kube-system add-ons
# Service accounts assume their role through IRSA: annotate the service account with
# eks.amazonaws.com/role-arn = <role ARN output>.

locals {
  oidc_issuer = trimprefix(aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://")

  service_accounts = {
    mlops              = "${var.k8s_namespace}:${var.k8s_service_account}"
    mlflow             = "${var.k8s_namespace}:${var.mlflow_service_account}"
    vpc_cni            = "kube-system:aws-node"
    cluster_autoscaler = "kube-system:cluster-autoscaler"
  }

  lake_arn      = aws_s3_bucket.data["lake"].arn
  landing_arn   = aws_s3_bucket.data["landing"].arn
  artifacts_arn = aws_s3_bucket.data["artifacts"].arn

  platform_secret_arns = [for secret in aws_secretsmanager_secret.platform : secret.arn]

  sagemaker_arn_prefix = "arn:${local.partition}:sagemaker:${var.region}:${local.account_id}"
}

data "aws_iam_policy_document" "irsa_assume" {
  for_each = local.service_accounts

  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${each.value}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

# AWS services that act with a role of this account: SageMaker endpoints, RDS Enhanced Monitoring
# (database.tf), VPC flow logs (network.tf). aws:SourceAccount: only on behalf of this account.
data "aws_iam_policy_document" "service_assume" {
  for_each = {
    sagemaker      = "sagemaker.amazonaws.com"
    rds_monitoring = "monitoring.rds.amazonaws.com"
    flow_logs      = "vpc-flow-logs.amazonaws.com"
  }

  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = [each.value]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# Every workload's objects are encrypted with the data key (kms.tf): its policy includes this one.
data "aws_iam_policy_document" "data_key" {
  statement {
    sid       = "DataKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [aws_kms_key.this["data"].arn]
  }
}

# --- mlops: Dagster ----------------------------------------------------------------------------

data "aws_iam_policy_document" "mlops" {
  source_policy_documents = [data.aws_iam_policy_document.data_key.json]

  statement {
    sid       = "LakeBucket"
    effect    = "Allow"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
    resources = [local.lake_arn]
  }

  # The lake, quarantine, endpoint state, alerts, prediction store and IO-manager outputs: written,
  # rewritten (a backfilled partition, a month's feature file) and deleted (a rename is a copy and
  # a delete on S3).
  statement {
    sid    = "LakeObjects"
    effect = "Allow"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${local.lake_arn}/*"]
  }

  statement {
    sid       = "LandingBucket"
    effect    = "Allow"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [local.landing_arn]
  }

  # Read what landed, and remove it once copied into the lake or the quarantine. Producers, not the
  # platform, write here.
  statement {
    sid       = "LandingObjects"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:DeleteObject"]
    resources = ["${local.landing_arn}/*"]
  }

  statement {
    sid       = "ArtifactsBucket"
    effect    = "Allow"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [local.artifacts_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.mlflow_prefix}/*", "${local.sagemaker_prefix}/*"]
    }
  }

  # Runs log models and plots to MLflow's artifact root; the sagemaker target uploads model archives.
  statement {
    sid    = "ArtifactsObjects"
    effect = "Allow"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [
      "${local.artifacts_arn}/${local.mlflow_prefix}/*",
      "${local.artifacts_arn}/${local.sagemaker_prefix}/*",
    ]
  }

  statement {
    sid       = "PlatformSecrets"
    effect    = "Allow"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = local.platform_secret_arns
  }
}

# What the sagemaker target of endpoint_<model> calls (mlops_assets/rollout/sagemaker.py).
data "aws_iam_policy_document" "mlops_sagemaker" {
  statement {
    sid    = "ManageEndpoints"
    effect = "Allow"
    actions = [
      "sagemaker:CreateModel",
      "sagemaker:DescribeModel",
      "sagemaker:CreateEndpointConfig",
      "sagemaker:DescribeEndpointConfig",
      "sagemaker:DeleteEndpointConfig",
      "sagemaker:CreateEndpoint",
      "sagemaker:DescribeEndpoint",
      "sagemaker:UpdateEndpoint",
      "sagemaker:UpdateEndpointWeightsAndCapacities",
      "sagemaker:DeleteEndpoint",
      "sagemaker:AddTags",
    ]
    resources = [
      "${local.sagemaker_arn_prefix}:model/*",
      "${local.sagemaker_arn_prefix}:endpoint-config/*",
      "${local.sagemaker_arn_prefix}:endpoint/*",
    ]
  }

  # ListEndpointConfigs takes no resource (old configs of an endpoint are found by name prefix).
  statement {
    sid       = "ListEndpointConfigs"
    effect    = "Allow"
    actions   = ["sagemaker:ListEndpointConfigs"]
    resources = ["*"]
  }

  statement {
    sid       = "PassExecutionRoleToSageMakerOnly"
    effect    = "Allow"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.workload["sagemaker"].arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["sagemaker.amazonaws.com"]
    }
  }
}

resource "aws_iam_policy" "mlops_sagemaker" {
  count = var.sagemaker_deployments_enabled ? 1 : 0

  name        = "${var.name}-dagster-sagemaker"
  description = "SageMaker endpoints of ${var.name}'s sagemaker deployment target"
  policy      = data.aws_iam_policy_document.mlops_sagemaker.json
}

resource "aws_iam_role_policy_attachment" "mlops_sagemaker" {
  count = var.sagemaker_deployments_enabled ? 1 : 0

  role       = aws_iam_role.workload["mlops"].name
  policy_arn = aws_iam_policy.mlops_sagemaker[0].arn
}

# --- mlflow: tracking server -------------------------------------------------------------------

data "aws_iam_policy_document" "mlflow" {
  source_policy_documents = [data.aws_iam_policy_document.data_key.json]

  statement {
    sid       = "ArtifactsBucket"
    effect    = "Allow"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [local.artifacts_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.mlflow_prefix}/*"]
    }
  }

  # The server shows every run's artifacts, takes uploads from HTTP clients that log through it, and
  # deletes the artifacts of deleted runs (mlflow gc runs with its identity).
  statement {
    sid    = "ArtifactsObjects"
    effect = "Allow"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${local.artifacts_arn}/${local.mlflow_prefix}/*"]
  }
}

# --- SageMaker execution role --------------------------------------------------------------------

data "aws_iam_policy_document" "sagemaker" {
  source_policy_documents = [data.aws_iam_policy_document.data_key.json]

  statement {
    sid       = "ArtifactsBucket"
    effect    = "Allow"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [local.artifacts_arn]
  }

  statement {
    sid       = "ReadArtifacts"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["${local.artifacts_arn}/*"]
  }

  # The server files every request and prediction in the prediction store, where the canary check
  # and monitoring read them. New objects only (one per flush): no read, no delete.
  statement {
    sid     = "WritePredictionLog"
    effect  = "Allow"
    actions = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = [
      "${local.lake_arn}/${var.storage_prefix}/lake/requests/*",
      "${local.lake_arn}/${var.storage_prefix}/lake/served/*",
    ]
  }

  statement {
    sid       = "RegistryLogin"
    effect    = "Allow"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid    = "PullServingImage"
    effect = "Allow"
    actions = [
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
      "ecr:BatchCheckLayerAvailability",
    ]
    resources = [aws_ecr_repository.this["serving"].arn]
  }

  statement {
    sid    = "EndpointLogs"
    effect = "Allow"
    actions = [
      "logs:CreateLogGroup",
      "logs:CreateLogStream",
      "logs:PutLogEvents",
      "logs:DescribeLogStreams",
    ]
    resources = [
      "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/sagemaker/Endpoints/*",
      "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/sagemaker/Endpoints/*:log-stream:*",
    ]
  }

  statement {
    sid       = "EndpointMetrics"
    effect    = "Allow"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]

    condition {
      test     = "StringLike"
      variable = "cloudwatch:namespace"
      values   = ["/aws/sagemaker/*"]
    }
  }
}

# --- kube-system add-ons -----------------------------------------------------------------------

resource "aws_iam_role" "vpc_cni" {
  name               = "${local.cluster_name}-vpc-cni"
  description        = "Amazon VPC CNI (service account ${local.service_accounts.vpc_cni})"
  assume_role_policy = data.aws_iam_policy_document.irsa_assume["vpc_cni"].json
}

resource "aws_iam_role_policy_attachment" "vpc_cni" {
  role       = aws_iam_role.vpc_cni.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKS_CNI_Policy"
}

data "aws_iam_policy_document" "cluster_autoscaler" {
  # Describe calls take no resource.
  statement {
    sid    = "Discover"
    effect = "Allow"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"]
  }

  # Labels, taints and sizes of the managed node groups (scaling from 0).
  statement {
    sid       = "DescribeNodeGroups"
    effect    = "Allow"
    actions   = ["eks:DescribeNodegroup"]
    resources = ["arn:${local.partition}:eks:${var.region}:${local.account_id}:nodegroup/${local.cluster_name}/*/*"]
  }

  # Resize only this cluster's groups (EKS names their ASGs eks-*, and tags them as the cluster's).
  statement {
    sid    = "ScaleThisClustersGroups"
    effect = "Allow"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    resources = ["arn:${local.partition}:autoscaling:${var.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/eks-*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${local.cluster_name}"
      values   = ["owned"]
    }
  }
}

# --- the workloads' roles ------------------------------------------------------------------------

# Each workload's role: who may assume it, and one policy of its own (the documents above).
locals {
  workload_roles = {
    mlops = {
      name               = "${var.name}-dagster"
      description        = "Dagster code server, runs and steps (service account ${local.service_accounts.mlops})"
      assume_role_policy = data.aws_iam_policy_document.irsa_assume["mlops"].json
      policy_description = "Lake, landing, MLflow artifacts and the platform's secrets for ${var.name}'s Dagster"
      policy             = data.aws_iam_policy_document.mlops.json
    }
    mlflow = {
      name               = "${var.name}-mlflow"
      description        = "MLflow tracking server (service account ${local.service_accounts.mlflow})"
      assume_role_policy = data.aws_iam_policy_document.irsa_assume["mlflow"].json
      policy_description = "MLflow artifacts of ${var.name}"
      policy             = data.aws_iam_policy_document.mlflow.json
    }
    sagemaker = {
      name               = "${var.name}-sagemaker"
      description        = "Execution role of ${var.name}'s SageMaker endpoints (sagemaker deployment target)"
      assume_role_policy = data.aws_iam_policy_document.service_assume["sagemaker"].json
      policy_description = "Model archives, serving image, logs and prediction log of ${var.name}'s SageMaker endpoints"
      policy             = data.aws_iam_policy_document.sagemaker.json
    }
    cluster_autoscaler = {
      name               = "${local.cluster_name}-cluster-autoscaler"
      description        = "Cluster autoscaler (service account ${local.service_accounts.cluster_autoscaler})"
      assume_role_policy = data.aws_iam_policy_document.irsa_assume["cluster_autoscaler"].json
      policy_description = "Scale the node groups of ${local.cluster_name}"
      policy             = data.aws_iam_policy_document.cluster_autoscaler.json
    }
  }
}

resource "aws_iam_role" "workload" {
  for_each = local.workload_roles

  name               = each.value.name
  description        = each.value.description
  assume_role_policy = each.value.assume_role_policy
}

resource "aws_iam_policy" "workload" {
  for_each = local.workload_roles

  name        = each.value.name
  description = each.value.policy_description
  policy      = each.value.policy
}

resource "aws_iam_role_policy_attachment" "workload" {
  for_each = local.workload_roles

  role       = aws_iam_role.workload[each.key].name
  policy_arn = aws_iam_policy.workload[each.key].arn
}
