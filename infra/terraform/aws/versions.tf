# Terraform 1.10: variable validations that refer to other variables (1.9) and S3 state locking
# without DynamoDB (use_lockfile). The state holds the database password, the Redis AUTH token and
# the admin token: keep it in a private, versioned, encrypted S3 bucket (README: "State").
terraform {
  required_version = ">= 1.10.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }

  # Partial configuration: bucket, key and region are given at `terraform init -backend-config=...`,
  # so one copy of this tree serves every environment (README: "State").
  backend "s3" {}
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      "mlops:platform"   = var.name
      "mlops:managed-by" = "terraform"
    })
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# The zones named by availability_zone_letters, checked to exist and be available in the region.
data "aws_availability_zones" "selected" {
  state = "available"

  filter {
    name   = "zone-name"
    values = [for l in var.availability_zone_letters : "${var.region}${l}"]
  }

  lifecycle {
    postcondition {
      condition     = length(self.names) == length(var.availability_zone_letters)
      error_message = "Some of availability_zone_letters are not available zones of this region: found ${join(", ", self.names)}."
    }
  }
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  azs        = data.aws_availability_zones.selected.names
  az_count   = length(var.availability_zone_letters)

  cluster_name = "${var.name}-eks"

  # Globally unique bucket names: the platform name, the account and the region.
  bucket_suffix = "${local.account_id}-${var.region}"
}
