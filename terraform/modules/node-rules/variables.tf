variable "role" {
  description = "What the node is: \"seed\" (the mesh's first node: join service and etcd), \"node\" (a joined node) or \"relay\" (a joined node that relays for others, meshctl join --relay)."
  type        = string

  validation {
    condition     = contains(["seed", "node", "relay"], var.role)
    error_message = "role must be one of \"seed\", \"node\" or \"relay\"."
  }
}

variable "allowed_cidrs" {
  description = "Underlay CIDRs that may reach the node's WireGuard, direct-path check and relay ports: the addresses of the other mesh nodes (or 0.0.0.0/0 for nodes anywhere, e.g. behind NAT)."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidrs) > 0
    error_message = "allowed_cidrs is empty: give the CIDRs of the other mesh nodes (e.g. [\"10.0.0.0/16\"]), or [\"0.0.0.0/0\"] when nodes can be anywhere."
  }

  validation {
    condition     = alltrue([for c in var.allowed_cidrs : try(cidrhost(c, 0) == split("/", c)[0], false)])
    error_message = "Every entry of allowed_cidrs must be a CIDR prefix with no host bits set, such as 10.0.0.0/16 or 198.51.100.7/32."
  }
}

variable "join_cidrs" {
  description = "For role \"seed\" only: the CIDRs that may reach the join service (TCP 51834) and etcd (TCP 2379), i.e. where joining and joined nodes are. Empty for other roles."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.join_cidrs : try(cidrhost(c, 0) == split("/", c)[0], false)])
    error_message = "Every entry of join_cidrs must be a CIDR prefix with no host bits set, such as 10.0.0.0/16 or 198.51.100.7/32."
  }
}

variable "name_prefix" {
  description = "Prefix of the rule and firewall names: 1-40 lower-case letters, digits and '-', starting with a letter (fits every cloud's firewall name rules)."
  type        = string
  default     = "weft"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$", var.name_prefix))
    error_message = "name_prefix must be 1-40 lower-case letters, digits and '-', starting with a letter and not ending with '-' (e.g. weft-prod)."
  }
}

variable "tags" {
  description = "Tags for the cloud resources; keys are lower-cased and trimmed, and the module adds weft-role."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.tags) : length(trimspace(k)) > 0 && length(trimspace(k)) <= 63])
    error_message = "Tag keys must be 1-63 characters after trimming white space."
  }
}
