# A Weft node on AWS: an EC2 instance with the cloud-init join and a security
# group from node-rules. Thin on purpose: every rule, name and the user data
# come from the provider-free submodules, which are tested fully; this file is
# only format-checked here (the aws provider cannot be built in CI).

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
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
  description = "Prefix of the security group name."
  type        = string
  default     = "weft"
}

variable "tags" {
  description = "Tags for the instance and security group."
  type        = map(string)
  default     = {}
}

variable "ami" {
  description = "AMI id of a Debian or Ubuntu image with cloud-init."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type."
  type        = string
  default     = "t3.small"
}

variable "subnet_id" {
  description = "Subnet of the instance."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the security group."
  type        = string
}

variable "associate_public_ip" {
  description = "Give the instance a public IPv4 address."
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

resource "aws_security_group" "node" {
  name        = module.rules.name
  description = "Weft ${var.role} ${var.name}"
  vpc_id      = var.vpc_id
  tags        = module.rules.tags

  dynamic "ingress" {
    for_each = module.rules.ingress_rules
    content {
      description      = ingress.value.description
      protocol         = ingress.value.protocol
      from_port        = ingress.value.from_port
      to_port          = ingress.value.to_port
      cidr_blocks      = [for c in ingress.value.cidrs : c if !strcontains(c, ":")]
      ipv6_cidr_blocks = [for c in ingress.value.cidrs : c if strcontains(c, ":")]
    }
  }

  egress {
    description = "all outbound (peers, the seed, package downloads)"
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_instance" "node" {
  ami                         = var.ami
  instance_type               = var.instance_type
  subnet_id                   = var.subnet_id
  vpc_security_group_ids      = [aws_security_group.node.id]
  associate_public_ip_address = var.associate_public_ip
  user_data_base64            = module.cloud_init.user_data_base64
  # A new token (or any change of the user data) means a new machine: the
  # join runs once per instance.
  user_data_replace_on_change = true
  tags                        = merge(module.rules.tags, { Name = var.name })

  metadata_options {
    http_tokens = "required"
  }
}

output "id" {
  description = "The EC2 instance id."
  value       = aws_instance.node.id
}

output "public_ip" {
  description = "The instance's public IPv4 address (null without associate_public_ip)."
  value       = aws_instance.node.public_ip
}

output "private_ip" {
  description = "The instance's private IPv4 address."
  value       = aws_instance.node.private_ip
}

output "security_group_id" {
  description = "The node's security group."
  value       = aws_security_group.node.id
}
