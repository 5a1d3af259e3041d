# Feast's online store: the latest feature values per entity, read by the model servers on every
# request. A Redis OSS replication group (cluster mode off: Feast's redis_type "redis"), TLS and an
# AUTH token required, encrypted at rest with the data key, reachable from the EKS cluster only.
# MLOPS_REDIS = <primary endpoint>:6379,password=<token>,ssl=true

locals {
  redis_id   = "${var.name}-feast"
  redis_port = 6379
}

# Alphanumeric: ElastiCache accepts only a few special characters, and the token is embedded in
# MLOPS_REDIS, whose fields are separated by commas and equal signs.
resource "random_password" "redis" {
  length  = 64
  special = false
}

resource "aws_elasticache_subnet_group" "feast" {
  name        = local.redis_id
  description = "Private subnets of ${var.name}'s Feast online store"
  subnet_ids  = aws_subnet.private[*].id
}

resource "aws_security_group" "redis" {
  name        = "${var.name}-redis"
  description = "Redis of ${var.name} (Feast online store): reachable from the EKS cluster only"
  vpc_id      = aws_vpc.this.id

  tags = { Name = "${var.name}-redis" }
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_eks" {
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis from the EKS nodes and pods (cluster security group)"
  referenced_security_group_id = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = local.redis_port
  to_port                      = local.redis_port
}

resource "aws_elasticache_replication_group" "feast" {
  replication_group_id = local.redis_id
  description          = "${var.name}: Feast online store"

  engine               = "redis"
  engine_version       = var.redis_engine_version
  parameter_group_name = "default.redis7"
  node_type            = var.redis_node_type
  port                 = local.redis_port

  num_cache_clusters         = var.redis_num_cache_clusters
  automatic_failover_enabled = var.redis_automatic_failover
  multi_az_enabled           = var.redis_automatic_failover
  # One node per zone, round robin: a zone failure leaves a replica to promote.
  preferred_cache_cluster_azs = [for i in range(var.redis_num_cache_clusters) : local.azs[i % length(local.azs)]]

  subnet_group_name  = aws_elasticache_subnet_group.feast.name
  security_group_ids = [aws_security_group.redis.id]

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.this["data"].arn
  transit_encryption_enabled = true
  transit_encryption_mode    = "required"
  auth_token                 = random_password.redis.result
  auth_token_update_strategy = "ROTATE"

  snapshot_retention_limit   = var.redis_snapshot_retention_days
  snapshot_window            = "02:00-03:00"
  maintenance_window         = "sun:05:30-sun:06:30"
  auto_minor_version_upgrade = true
  apply_immediately          = false

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.this["redis_slow_log"].name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.this["redis_engine"].name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "engine-log"
  }
}
