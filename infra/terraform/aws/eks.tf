# The EKS cluster and its node groups (mlops_assets/k8s.py names the taints and labels):
#   system    on-demand, fixed-ish size: Dagster webserver, daemon and code server, run workers,
#             MLflow, cluster add-ons
#   training  spot, several instance types, scales from 0: steps whose size says spot (training by
#             default) tolerate mlops/spot=true:NoSchedule and prefer nodes labelled mlops/spot=true
#   gpu       optional (gpu_node_group_enabled), scales from 0: steps asking for GPUs tolerate
#             nvidia.com/gpu:NoSchedule and select mlops/gpu=true
# Nodes and pods share the cluster security group, which RDS and Redis admit.

locals {
  spot_label = { key = "mlops/spot", value = "true" }
  spot_taint = { key = "mlops/spot", value = "true", effect = "NO_SCHEDULE" }
  gpu_label  = { key = "mlops/gpu", value = "true" }
  gpu_taint  = { key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }

  node_pools = concat(["system", "training"], var.gpu_node_group_enabled ? ["gpu"] : [])

  # The cluster autoscaler scales a group from 0 only if it knows, before any node exists, which
  # labels and taints a new node will carry: it reads them from these tags of the group's ASG.
  autoscaler_template_tags = {
    training = merge(
      { "k8s.io/cluster-autoscaler/node-template/label/${local.spot_label.key}" = local.spot_label.value },
      { "k8s.io/cluster-autoscaler/node-template/taint/${local.spot_taint.key}" = "${local.spot_taint.value}:NoSchedule" },
    )
    gpu = merge(
      { "k8s.io/cluster-autoscaler/node-template/label/${local.gpu_label.key}" = local.gpu_label.value },
      { "k8s.io/cluster-autoscaler/node-template/taint/${local.gpu_taint.key}" = "${local.gpu_taint.value}:NoSchedule" },
      var.gpu_capacity_type == "SPOT" ? {
        "k8s.io/cluster-autoscaler/node-template/label/${local.spot_label.key}" = local.spot_label.value
        "k8s.io/cluster-autoscaler/node-template/taint/${local.spot_taint.key}" = "${local.spot_taint.value}:NoSchedule"
      } : {},
    )
  }
  autoscaler_discovery_tags = {
    "k8s.io/cluster-autoscaler/enabled"               = "true"
    "k8s.io/cluster-autoscaler/${local.cluster_name}" = "owned"
  }
}

# --- cluster -----------------------------------------------------------------------------------

data "aws_iam_policy_document" "cluster_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "cluster" {
  name               = "${local.cluster_name}-cluster"
  assume_role_policy = data.aws_iam_policy_document.cluster_assume.json
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

resource "aws_eks_cluster" "this" {
  name     = local.cluster_name
  version  = var.eks_version
  role_arn = aws_iam_role.cluster.arn

  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  vpc_config {
    subnet_ids              = aws_subnet.private[*].id
    endpoint_private_access = true
    endpoint_public_access  = var.eks_public_endpoint
    public_access_cidrs     = var.eks_public_endpoint ? var.eks_public_access_cidrs : null
  }

  encryption_config {
    resources = ["secrets"]

    provider {
      key_arn = aws_kms_key.this["eks"].arn
    }
  }

  # A version leaving standard support is upgraded, not silently billed as extended support.
  upgrade_policy {
    support_type = "STANDARD"
  }

  # The log groups (logs.tf) exist first, with the platform's retention and key.
  depends_on = [
    aws_cloudwatch_log_group.this,
    aws_iam_role_policy_attachment.cluster,
  ]
}

# IRSA: service accounts assume IAM roles (iam.tf) with tokens this provider vouches for.
resource "aws_iam_openid_connect_provider" "eks" {
  url            = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list = ["sts.amazonaws.com"]
}

resource "aws_eks_access_entry" "admins" {
  for_each = toset(var.eks_admin_principal_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value
  type          = "STANDARD"
}

resource "aws_eks_access_policy_association" "admins" {
  for_each = toset(var.eks_admin_principal_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = aws_eks_access_entry.admins[each.value].principal_arn
  policy_arn    = "arn:${local.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"

  access_scope {
    type = "cluster"
  }
}

# --- add-ons -----------------------------------------------------------------------------------

# The VPC CNI gets its ENI permissions through its own service account role, not the node role,
# and enforces Kubernetes NetworkPolicies.
resource "aws_eks_addon" "vpc_cni" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "vpc-cni"
  service_account_role_arn    = aws_iam_role.vpc_cni.arn
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "PRESERVE"
  configuration_values        = jsonencode({ enableNetworkPolicy = "true" })
}

resource "aws_eks_addon" "kube_proxy" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "kube-proxy"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "PRESERVE"
}

resource "aws_eks_addon" "coredns" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "coredns"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "PRESERVE"

  # CoreDNS pods need a node to become healthy.
  depends_on = [aws_eks_node_group.system]
}

# --- nodes -------------------------------------------------------------------------------------

data "aws_iam_policy_document" "node_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${local.cluster_name}-node"
  assume_role_policy = data.aws_iam_policy_document.node_assume.json
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEC2ContainerRegistryPullOnly",
  ])

  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.value}"
}

# One launch template per pool: IMDSv2 only, and a hop limit of 1 so that pods cannot reach the
# instance metadata (and the node role's credentials): they use their service account's role.
resource "aws_launch_template" "node" {
  for_each = toset(local.node_pools)

  name_prefix            = "${local.cluster_name}-${each.value}-"
  description            = "${local.cluster_name} ${each.value} nodes"
  update_default_version = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  # Encrypted with the account's EBS key: a customer key would have to grant the Auto Scaling
  # service-linked role, which does not exist before the account's first Auto Scaling group.
  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.node_disk_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = { Name = "${local.cluster_name}-${each.value}", "mlops:pool" = each.value }
  }

  tag_specifications {
    resource_type = "volume"
    tags          = { Name = "${local.cluster_name}-${each.value}", "mlops:pool" = each.value }
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_eks_node_group" "system" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "system"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id

  capacity_type  = "ON_DEMAND"
  ami_type       = "AL2023_x86_64_STANDARD"
  instance_types = var.system_instance_types

  scaling_config {
    min_size     = var.system_node_count
    desired_size = var.system_node_count
    max_size     = var.system_node_max
  }

  update_config {
    max_unavailable = 1
  }

  launch_template {
    id      = aws_launch_template.node["system"].id
    version = aws_launch_template.node["system"].latest_version
  }

  labels = { "mlops/pool" = "system" }

  tags = local.autoscaler_discovery_tags

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.vpc_cni]
}

resource "aws_eks_node_group" "training" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "training"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id

  capacity_type  = "SPOT"
  ami_type       = "AL2023_x86_64_STANDARD"
  instance_types = var.training_instance_types

  scaling_config {
    min_size     = 0
    desired_size = 0
    max_size     = var.training_node_max
  }

  update_config {
    max_unavailable_percentage = 50
  }

  launch_template {
    id      = aws_launch_template.node["training"].id
    version = aws_launch_template.node["training"].latest_version
  }

  labels = {
    (local.spot_label.key) = local.spot_label.value
    "mlops/pool"           = "training"
  }

  taint {
    key    = local.spot_taint.key
    value  = local.spot_taint.value
    effect = local.spot_taint.effect
  }

  tags = merge(local.autoscaler_discovery_tags, local.autoscaler_template_tags.training)

  # The cluster autoscaler owns the size between min and max.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.vpc_cni]
}

resource "aws_eks_node_group" "gpu" {
  count = var.gpu_node_group_enabled ? 1 : 0

  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "gpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id

  capacity_type  = var.gpu_capacity_type
  ami_type       = "AL2023_x86_64_NVIDIA"
  instance_types = var.gpu_instance_types

  scaling_config {
    min_size     = 0
    desired_size = 0
    max_size     = var.gpu_node_max
  }

  update_config {
    max_unavailable_percentage = 50
  }

  launch_template {
    id      = aws_launch_template.node["gpu"].id
    version = aws_launch_template.node["gpu"].latest_version
  }

  labels = merge(
    { (local.gpu_label.key) = local.gpu_label.value, "mlops/pool" = "gpu" },
    var.gpu_capacity_type == "SPOT" ? { (local.spot_label.key) = local.spot_label.value } : {},
  )

  taint {
    key    = local.gpu_taint.key
    value  = local.gpu_taint.value
    effect = local.gpu_taint.effect
  }

  dynamic "taint" {
    for_each = var.gpu_capacity_type == "SPOT" ? [local.spot_taint] : []

    content {
      key    = taint.value.key
      value  = taint.value.value
      effect = taint.value.effect
    }
  }

  tags = merge(local.autoscaler_discovery_tags, local.autoscaler_template_tags.gpu)

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.vpc_cni]
}

# EKS does not copy a node group's tags to its Auto Scaling group, where the cluster autoscaler
# reads the node-template tags.
resource "aws_autoscaling_group_tag" "training" {
  for_each = local.autoscaler_template_tags.training

  autoscaling_group_name = aws_eks_node_group.training.resources[0].autoscaling_groups[0].name

  tag {
    key                 = each.key
    value               = each.value
    propagate_at_launch = false
  }
}

resource "aws_autoscaling_group_tag" "gpu" {
  for_each = var.gpu_node_group_enabled ? local.autoscaler_template_tags.gpu : {}

  autoscaling_group_name = aws_eks_node_group.gpu[0].resources[0].autoscaling_groups[0].name

  tag {
    key                 = each.key
    value               = each.value
    propagate_at_launch = false
  }
}
