# One PostgreSQL server for the platform's three databases:
#   dagster  the Dagster instance (runs, event log, schedules): created by RDS here
#   mlflow   MLflow's backend store (tracking and model registry)
#   feast    Feast's SQL registry
# RDS creates only one database; the Kubernetes bootstrap Job creates mlflow and feast if missing.
# Reachable only from the EKS cluster's security group, TLS required (rds.force_ssl).

locals {
  db_identifier = "${var.name}-postgres"
  db_major      = split(".", var.db_engine_version)[0]
  db_name       = "dagster"
  db_port       = 5432
}

# Alphanumeric only: the password sits inside connection URLs (MLFLOW_TRACKING_URI,
# FEAST_REGISTRY_URI) and dagster.yaml, where special characters would need escaping.
resource "random_password" "db" {
  length  = 40
  special = false
}

resource "aws_db_subnet_group" "platform" {
  name        = local.db_identifier
  description = "Private subnets of ${var.name}'s PostgreSQL"
  subnet_ids  = aws_subnet.private[*].id
}

resource "aws_security_group" "db" {
  name        = "${var.name}-postgres"
  description = "PostgreSQL of ${var.name}: reachable from the EKS cluster only"
  vpc_id      = aws_vpc.this.id

  tags = { Name = "${var.name}-postgres" }
}

resource "aws_vpc_security_group_ingress_rule" "db_from_eks" {
  security_group_id            = aws_security_group.db.id
  description                  = "PostgreSQL from the EKS nodes and pods (cluster security group)"
  referenced_security_group_id = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = local.db_port
  to_port                      = local.db_port
}

resource "aws_db_parameter_group" "platform" {
  name_prefix = "${local.db_identifier}-pg${local.db_major}-"
  family      = "postgres${local.db_major}"
  description = "${var.name}: TLS only, DDL and slow statements logged"

  # pending-reboot is accepted for static and dynamic parameters alike; a new instance starts with it.
  parameter {
    name         = "rds.force_ssl"
    value        = "1"
    apply_method = "pending-reboot"
  }

  # Schema changes (Dagster and MLflow migrations, the bootstrap Job) leave a trace.
  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = tostring(var.db_log_min_duration_statement_ms)
  }

  parameter {
    name  = "log_connections"
    value = "1"
  }

  parameter {
    name  = "log_disconnections"
    value = "1"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.service_assume["rds_monitoring"].json
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "platform" {
  identifier     = local.db_identifier
  engine         = "postgres"
  engine_version = var.db_engine_version
  instance_class = var.db_instance_class

  db_name  = local.db_name
  username = var.db_username
  password = random_password.db.result
  port     = local.db_port

  allocated_storage     = var.db_allocated_storage_gb
  max_allocated_storage = var.db_max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.this["data"].arn

  db_subnet_group_name   = aws_db_subnet_group.platform.name
  vpc_security_group_ids = [aws_security_group.db.id]
  publicly_accessible    = false
  multi_az               = var.db_multi_az
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  parameter_group_name                = aws_db_parameter_group.platform.name
  iam_database_authentication_enabled = true

  backup_retention_period   = var.db_backup_retention_days
  backup_window             = "03:00-04:00"
  maintenance_window        = "sun:04:30-sun:05:30"
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = true
  skip_final_snapshot       = false
  final_snapshot_identifier = "${local.db_identifier}-final"

  auto_minor_version_upgrade  = true
  allow_major_version_upgrade = false
  apply_immediately           = false

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.this["data"].arn
  performance_insights_retention_period = var.db_performance_insights_retention_days

  monitoring_interval = var.db_monitoring_interval
  monitoring_role_arn = aws_iam_role.rds_monitoring.arn

  enabled_cloudwatch_logs_exports = ["postgresql", "upgrade"]

  # The log groups (logs.tf) exist first, with the platform's retention and key.
  depends_on = [
    aws_cloudwatch_log_group.this,
    aws_iam_role_policy_attachment.rds_monitoring,
  ]
}
