# Fixture for tftest's own tests: the built-in terraform_data, the null and
# local providers from the local mirror, and a module reached by a relative
# source (../modules/label), which works only if the whole tree is copied.
terraform {
  required_providers {
    null = {
      source  = "hashicorp/null"
      version = "~> 3.2"
    }
    local = {
      source  = "hashicorp/local"
      version = "~> 2.4"
    }
  }
}

variable "path" {
  description = "Where local_file writes the content (the test's temp dir)."
  type        = string
}

variable "content" {
  type = string
}

variable "labels" {
  description = "A complex value, to show it survives the JSON var file."
  type        = map(string)
  default     = {}
}

variable "secret" {
  type      = string
  sensitive = true
  default   = "none"
}

module "label" {
  source = "../modules/label"
  labels = var.labels
}

resource "terraform_data" "marker" {
  input = var.content
}

resource "null_resource" "trigger" {
  triggers = {
    content = var.content
  }
}

resource "local_file" "out" {
  filename        = var.path
  content         = "${var.content}\n${module.label.text}\n"
  file_permission = "0644"
}

output "path" {
  value = local_file.out.filename
}

output "label" {
  value = module.label.text
}

output "secret" {
  value     = var.secret
  sensitive = true
}
