# The two images of infra/Dockerfile, built from the same commit:
#   mlops-assets   the code location (default target): Dagster code server, run workers, steps
#   mlops-serving  the model server (--target serving): Kubernetes and SageMaker endpoints
# Tags are immutable: a tag (the git commit) always names the same image, so a deployment or an
# audit record that names a tag names exactly what ran. Images are scanned on push.

locals {
  ecr_repositories = {
    code_location = "mlops-assets"
    serving       = "mlops-serving"
  }
  ecr_prefix = var.ecr_repository_prefix == "" ? "" : "${var.ecr_repository_prefix}/"
}

resource "aws_ecr_repository" "this" {
  for_each = local.ecr_repositories

  name                 = "${local.ecr_prefix}${each.value}"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = false

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.this["data"].arn
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  for_each = aws_ecr_repository.this

  repository = each.value.name
  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Untagged layers of interrupted or superseded pushes go after a week"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 7
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the newest ${var.ecr_images_kept} images"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.ecr_images_kept
        }
        action = { type = "expire" }
      },
    ]
  })
}
