# Every log group the platform's services write to, created here before the service so that it has
# the platform's retention and KMS key (a service that creates its own group keeps logs forever,
# unencrypted by a customer key). The names are the ones the services write to.

locals {
  log_groups = {
    eks_cluster    = "/aws/eks/${local.cluster_name}/cluster"
    flow_logs      = "/aws/vpc/${var.name}/flow-logs"
    rds_postgresql = "/aws/rds/instance/${local.db_identifier}/postgresql"
    rds_upgrade    = "/aws/rds/instance/${local.db_identifier}/upgrade"
    redis_slow_log = "/aws/elasticache/${local.redis_id}/slow-log"
    redis_engine   = "/aws/elasticache/${local.redis_id}/engine-log"
  }
}

resource "aws_cloudwatch_log_group" "eks_cluster" {
  name              = local.log_groups.eks_cluster
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}

resource "aws_cloudwatch_log_group" "flow_logs" {
  name              = local.log_groups.flow_logs
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}

resource "aws_cloudwatch_log_group" "rds_postgresql" {
  name              = local.log_groups.rds_postgresql
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}

resource "aws_cloudwatch_log_group" "rds_upgrade" {
  name              = local.log_groups.rds_upgrade
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}

resource "aws_cloudwatch_log_group" "redis_slow_log" {
  name              = local.log_groups.redis_slow_log
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}

resource "aws_cloudwatch_log_group" "redis_engine" {
  name              = local.log_groups.redis_engine
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}
