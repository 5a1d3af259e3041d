# GKE Standard cluster for Dagster (webserver, daemon, code location), MLflow, the model servers and
# every run and step Job (dagster-k8s). Private nodes, Workload Identity, Dataplane V2 (network
# policy enforcement), shielded nodes. Node pools (mlops_assets/k8s.py must agree):
#   system    on-demand, always on: the long-running services and run workers
#   training  spot, scales from 0: steps whose size says spot: true tolerate its taint
#             mlops/spot=true:NoSchedule and prefer its label mlops/spot=true
#   gpu       optional (var.gpu_node_pool): label mlops/gpu=true, GKE's nvidia.com/gpu taint

resource "google_container_cluster" "main" {
  name     = "${var.name_prefix}-gke"
  location = local.cluster_location

  deletion_protection = var.deletion_protection

  network         = google_compute_network.main.id
  subnetwork      = google_compute_subnetwork.nodes.id
  networking_mode = "VPC_NATIVE"

  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }

  # Node pools are managed as their own resources (changing one never recreates the cluster).
  remove_default_node_pool = true
  initial_node_count       = 1

  # The short-lived default pool still boots before it is removed: it gets the same hardening.
  node_config {
    service_account = google_service_account.gke_nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    disk_type       = "pd-balanced"
    image_type      = "COS_CONTAINERD"

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    metadata = {
      disable-legacy-endpoints = "true"
    }
  }

  release_channel {
    channel = var.release_channel
  }

  workload_identity_config {
    workload_pool = local.workload_pool
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = var.private_endpoint
    master_ipv4_cidr_block  = var.master_ipv4_cidr

    master_global_access_config {
      enabled = false
    }
  }

  master_authorized_networks_config {
    gcp_public_cidrs_access_enabled = false

    dynamic "cidr_blocks" {
      for_each = var.master_authorized_networks
      content {
        cidr_block   = cidr_blocks.value.cidr_block
        display_name = cidr_blocks.value.display_name
      }
    }
  }

  # Dataplane V2 (eBPF) enforces NetworkPolicy itself: the Calico add-on stays off.
  datapath_provider = "ADVANCED_DATAPATH"

  network_policy {
    enabled = false
  }

  enable_shielded_nodes       = true
  enable_intranode_visibility = true
  enable_legacy_abac          = false

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  # Enforces the project's Binary Authorization policy (by default it admits every image; the
  # security team tightens it, e.g. to images of this project's Artifact Registry).
  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }

  dynamic "authenticator_groups_config" {
    for_each = var.rbac_security_group == null ? [] : [var.rbac_security_group]
    content {
      security_group = authenticator_groups_config.value
    }
  }

  logging_config {
    enable_components = ["SYSTEM_COMPONENTS", "WORKLOADS"]
  }

  monitoring_config {
    enable_components = ["SYSTEM_COMPONENTS"]
  }

  addons_config {
    http_load_balancing {
      disabled = false
    }
    horizontal_pod_autoscaling {
      disabled = false
    }
    gce_persistent_disk_csi_driver_config {
      enabled = true
    }
  }

  maintenance_policy {
    daily_maintenance_window {
      start_time = var.maintenance_start_time
    }
  }

  resource_labels = local.labels

  lifecycle {
    # The default pool's config only matters while the cluster is created.
    ignore_changes = [node_config]
  }

  depends_on = [
    google_project_service.enabled,
    google_project_iam_member.gke_nodes,
  ]
}

resource "google_container_node_pool" "system" {
  name     = "system"
  cluster  = google_container_cluster.main.id
  location = local.cluster_location

  initial_node_count = var.system_min_nodes

  # Per zone: a regional cluster runs this many in each of its zones.
  autoscaling {
    min_node_count = var.system_min_nodes
    max_node_count = var.system_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  upgrade_settings {
    strategy        = "SURGE"
    max_surge       = 1
    max_unavailable = 0
  }

  node_config {
    machine_type    = var.system_machine_type
    disk_type       = "pd-balanced"
    disk_size_gb    = var.node_disk_size_gb
    image_type      = "COS_CONTAINERD"
    service_account = google_service_account.gke_nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    labels = {
      "mlops/pool" = "system"
    }
    resource_labels = local.labels

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    metadata = {
      disable-legacy-endpoints = "true"
    }
  }

  lifecycle {
    # The autoscaler owns the node count after creation.
    ignore_changes = [initial_node_count]
  }
}

resource "google_container_node_pool" "training" {
  name     = "training"
  cluster  = google_container_cluster.main.id
  location = local.cluster_location

  initial_node_count = 0

  # Across all zones; ANY places nodes wherever spot capacity is available.
  autoscaling {
    total_min_node_count = 0
    total_max_node_count = var.training_max_nodes
    location_policy      = "ANY"
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  upgrade_settings {
    strategy        = "SURGE"
    max_surge       = 1
    max_unavailable = 0
  }

  node_config {
    machine_type    = var.training_machine_type
    spot            = true
    disk_type       = "pd-balanced"
    disk_size_gb    = var.node_disk_size_gb
    image_type      = "COS_CONTAINERD"
    service_account = google_service_account.gke_nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    # mlops_assets.k8s.SPOT_LABEL and SPOT_TOLERATION: only steps that may be preempted land here.
    labels = {
      "mlops/pool" = "training"
      "mlops/spot" = "true"
    }
    resource_labels = local.labels

    taint {
      key    = "mlops/spot"
      value  = "true"
      effect = "NO_SCHEDULE"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    metadata = {
      disable-legacy-endpoints = "true"
    }
  }

  lifecycle {
    ignore_changes = [initial_node_count]
  }
}

resource "google_container_node_pool" "gpu" {
  for_each = var.gpu_node_pool == null ? {} : { gpu = var.gpu_node_pool }

  name           = "gpu"
  cluster        = google_container_cluster.main.id
  location       = local.cluster_location
  node_locations = each.value.zones

  initial_node_count = 0

  autoscaling {
    total_min_node_count = 0
    total_max_node_count = each.value.max_nodes
    location_policy      = "ANY"
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  upgrade_settings {
    strategy        = "SURGE"
    max_surge       = 1
    max_unavailable = 0
  }

  node_config {
    machine_type    = each.value.machine_type
    spot            = each.value.spot
    disk_type       = "pd-balanced"
    disk_size_gb    = var.node_disk_size_gb
    image_type      = "COS_CONTAINERD"
    service_account = google_service_account.gke_nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    # GKE installs the driver and taints the nodes nvidia.com/gpu=present:NoSchedule
    # (mlops_assets.k8s.GPU_TOLERATION); GPU steps select mlops/gpu=true (GPU_LABEL).
    guest_accelerator {
      type  = each.value.accelerator_type
      count = each.value.accelerator_count

      gpu_driver_installation_config {
        gpu_driver_version = "DEFAULT"
      }
    }

    # Spot GPU nodes also carry the spot taint: a GPU step that may not be preempted never lands there.
    labels = merge(
      { "mlops/pool" = "gpu", "mlops/gpu" = "true" },
      each.value.spot ? { "mlops/spot" = "true" } : {},
    )
    resource_labels = local.labels

    dynamic "taint" {
      for_each = each.value.spot ? ["mlops/spot"] : []
      content {
        key    = taint.value
        value  = "true"
        effect = "NO_SCHEDULE"
      }
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    metadata = {
      disable-legacy-endpoints = "true"
    }
  }

  lifecycle {
    ignore_changes = [initial_node_count]
  }
}
