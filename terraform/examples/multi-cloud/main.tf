# Weft nodes in three clouds joining one mesh: a node on AWS, a node and a
# relay on Google Cloud, a node on Azure. The mesh's first node (the seed, made
# with `meshctl up`) exists already; its firewall comes from node-rules with
# role "seed". Not applied in CI (the cloud providers cannot be built there):
# format-checked only. See docs/terraform.md to run it.
#
# Make a reusable token on the seed (`meshctl token create --reusable
# --max-uses 3 --ttl 1h`) and give it as TF_VAR_join_token, never on the
# command line.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 3.0"
    }
  }
}

provider "aws" {
  region = var.aws_region
}

provider "google" {
  project = var.gcp_project
}

provider "azurerm" {
  features {}
}

variable "join_token" {
  description = "A reusable join token from 'meshctl token create' on the seed (set TF_VAR_join_token)."
  type        = string
  sensitive   = true
}

variable "binary_url" {
  description = "URL of the Weft release archive (meshctl and weft-agent)."
  type        = string
}

variable "sha256" {
  description = "SHA-256 of the archive at binary_url."
  type        = string
}

variable "mesh_cidrs" {
  description = "Where mesh nodes may connect from; the nodes are on public addresses in three clouds."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "aws_region" {
  description = "AWS region of aws-1."
  type        = string
  default     = "eu-west-1"
}

variable "aws_ami" {
  description = "AMI of a Debian or Ubuntu image with cloud-init in aws_region."
  type        = string
}

variable "aws_vpc_id" {
  description = "VPC of aws-1."
  type        = string
}

variable "aws_subnet_id" {
  description = "Public subnet of aws-1."
  type        = string
}

variable "gcp_project" {
  description = "GCP project of the node and the relay."
  type        = string
}

variable "gcp_zone" {
  description = "GCP zone."
  type        = string
  default     = "europe-west1-b"
}

variable "azure_resource_group" {
  description = "Existing Azure resource group."
  type        = string
}

variable "azure_location" {
  description = "Azure region."
  type        = string
  default     = "westeurope"
}

variable "azure_subnet_id" {
  description = "Azure subnet of the node."
  type        = string
}

variable "ssh_public_key" {
  description = "SSH public key for the Azure admin user."
  type        = string
}

locals {
  tags = { project = "weft-multi-cloud" }
}

module "aws_node" {
  source = "../../modules/aws-node"

  name          = "aws-1"
  labels        = { cloud = "aws", app = "web" }
  token         = var.join_token
  binary_url    = var.binary_url
  sha256        = var.sha256
  allowed_cidrs = var.mesh_cidrs
  ami           = var.aws_ami
  vpc_id        = var.aws_vpc_id
  subnet_id     = var.aws_subnet_id
  tags          = local.tags
}

module "gcp_node" {
  source = "../../modules/gcp-node"

  name          = "gcp-1"
  labels        = { cloud = "gcp", app = "worker" }
  token         = var.join_token
  binary_url    = var.binary_url
  sha256        = var.sha256
  allowed_cidrs = var.mesh_cidrs
  project       = var.gcp_project
  zone          = var.gcp_zone
  tags          = local.tags
}

module "gcp_relay" {
  source = "../../modules/gcp-node"

  name          = "relay-1"
  role          = "relay"
  labels        = { cloud = "gcp" }
  token         = var.join_token
  binary_url    = var.binary_url
  sha256        = var.sha256
  allowed_cidrs = var.mesh_cidrs
  project       = var.gcp_project
  zone          = var.gcp_zone
  tags          = local.tags
}

module "azure_node" {
  source = "../../modules/azure-node"

  name                 = "azure-1"
  labels               = { cloud = "azure", app = "db" }
  token                = var.join_token
  binary_url           = var.binary_url
  sha256               = var.sha256
  allowed_cidrs        = var.mesh_cidrs
  resource_group_name  = var.azure_resource_group
  location             = var.azure_location
  subnet_id            = var.azure_subnet_id
  admin_ssh_public_key = var.ssh_public_key
  tags                 = local.tags
}

output "nodes" {
  description = "Every node's addresses."
  value = {
    aws-1   = { public_ip = module.aws_node.public_ip, private_ip = module.aws_node.private_ip }
    gcp-1   = { public_ip = module.gcp_node.public_ip, private_ip = module.gcp_node.private_ip }
    relay-1 = { public_ip = module.gcp_relay.public_ip, private_ip = module.gcp_relay.private_ip }
    azure-1 = { public_ip = module.azure_node.public_ip, private_ip = module.azure_node.private_ip }
  }
}
