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

resource "aws_cloudwatch_log_group" "this" {
  for_each = local.log_groups

  name              = each.value
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this["logs"].arn
}
