# A Weft node on Google Cloud: a Compute Engine instance with the cloud-init join and
# firewall rules from node-rules. Thin on purpose: every rule, name and the user data
# come from the provider-free submodules, which are tested fully; this file is
# only format-checked here (the google provider cannot be built in CI).

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

variable "name" {
  description = "The node name (meshctl join --name); also the instance's Name tag."
  type        = string
}

variable "role" {
  description = "\"node\" or \"relay\" (see node-rules). The VM joins an existing mesh with meshctl join."
  type        = string
  default     = "node"

  validation {
    condition     = contains(["node", "relay"], var.role)
    error_message = "role must be \"node\" or \"relay\": this module joins a VM to an existing mesh. The seed (meshctl up) is not made by it; use the node-rules module with role \"seed\" for the seed's firewall."
  }
}

variable "token" {
  description = "The join token from 'meshctl token create'."
  type        = string
  sensitive   = true
}

variable "labels" {
  description = "Node labels (meshctl join --labels)."
  type        = map(string)
  default     = {}
}

variable "package_url" {
  description = "URL of a Weft .deb; set this or binary_url."
  type        = string
  default     = null
}

variable "binary_url" {
  description = "URL of a .tar.gz with meshctl and weft-agent; needs sha256."
  type        = string
  default     = null
}

variable "sha256" {
  description = "SHA-256 of the archive at binary_url."
  type        = string
  default     = null
}

variable "extra_agent_flags" {
  description = "weft-agent flags (after -- on meshctl join)."
  type        = list(string)
  default     = []
}

variable "wait" {
  description = "meshctl join --wait."
  type        = string
  default     = "60s"
}

variable "allowed_cidrs" {
  description = "Underlay CIDRs of the other mesh nodes."
  type        = list(string)
}

variable "name_prefix" {
  description = "Prefix of the firewall rule names."
  type        = string
  default     = "weft"
}

variable "tags" {
  description = "Labels for the instance (GCP labels: lower-case keys)."
  type        = map(string)
  default     = {}
}

variable "project" {
  description = "The GCP project."
  type        = string
}

variable "zone" {
  description = "The zone of the instance, e.g. europe-west1-b."
  type        = string
}

variable "network" {
  description = "The VPC network (name or self link) of the instance and its firewall rules."
  type        = string
  default     = "default"
}

variable "subnetwork" {
  description = "The subnetwork of the instance (null: the network's default)."
  type        = string
  default     = null
}

variable "machine_type" {
  description = "The machine type."
  type        = string
  default     = "e2-small"
}

variable "image" {
  description = "A boot image with cloud-init, e.g. debian-cloud/debian-12 (Debian's GCE images run cloud-init for user-data only if it is installed: use an image that has it, e.g. ubuntu-os-cloud/ubuntu-2204-lts)."
  type        = string
  default     = "ubuntu-os-cloud/ubuntu-2204-lts"
}

variable "public_ip" {
  description = "Give the instance an ephemeral public IPv4 address."
  type        = bool
  default     = true
}

module "rules" {
  source = "../node-rules"

  role          = var.role
  allowed_cidrs = var.allowed_cidrs
  # Cloud resource names take no '.', and node-rules bounds the prefix.
  name_prefix = trim(substr("${var.name_prefix}-${replace(var.name, ".", "-")}", 0, 40), "-")
  tags        = var.tags
}

module "cloud_init" {
  source = "../cloud-init"

  name              = var.name
  labels            = var.labels
  token             = var.token
  package_url       = var.package_url
  binary_url        = var.binary_url
  sha256            = var.sha256
  relay             = var.role == "relay"
  extra_agent_flags = var.extra_agent_flags
  wait              = var.wait
}

locals {
  # Firewall rules select the instance by this network tag.
  network_tag = module.rules.name
}

resource "google_compute_firewall" "node" {
  for_each = { for r in module.rules.ingress_rules : r.name => r }

  project       = var.project
  name          = each.key
  network       = var.network
  description   = each.value.description
  direction     = "INGRESS"
  source_ranges = each.value.cidrs
  target_tags   = [local.network_tag]

  allow {
    protocol = each.value.protocol
    ports    = [each.value.from_port == each.value.to_port ? tostring(each.value.from_port) : "${each.value.from_port}-${each.value.to_port}"]
  }
}

resource "google_compute_instance" "node" {
  project      = var.project
  zone         = var.zone
  name         = var.name
  machine_type = var.machine_type
  tags         = [local.network_tag]
  labels       = module.rules.tags

  boot_disk {
    initialize_params {
      image = var.image
    }
  }

  network_interface {
    network    = var.network
    subnetwork = var.subnetwork

    dynamic "access_config" {
      for_each = var.public_ip ? [1] : []
      content {}
    }
  }

  metadata = {
    user-data = module.cloud_init.user_data
  }
}

output "id" {
  description = "The instance id."
  value       = google_compute_instance.node.instance_id
}

output "public_ip" {
  description = "The instance's public IPv4 address (null without public_ip)."
  value       = var.public_ip ? google_compute_instance.node.network_interface[0].access_config[0].nat_ip : null
}

output "private_ip" {
  description = "The instance's private IPv4 address."
  value       = google_compute_instance.node.network_interface[0].network_ip
}
