variable "lab_name" {
  description = "The lab's name: 1-16 lower-case letters and digits (meshctl lab's rule). It prefixes the lab's namespaces (wl-NAME-...) and names the agents' state (/run/weft-NAME) and pins (/sys/fs/bpf/weft-NAME)."
  type        = string
  default     = "tflab"

  validation {
    condition     = can(regex("^[a-z0-9]{1,16}$", var.lab_name))
    error_message = "The lab name must be 1-16 lower-case letters and digits (no dashes: it is part of every namespace name, wl-NAME-NODE), such as tflab or ci2."
  }
}

variable "bin_dir" {
  description = "Absolute path of the directory with meshctl, weft-agent and weft-lab (make build puts them in bin/ of the checkout)."
  type        = string

  validation {
    condition     = startswith(var.bin_dir, "/")
    error_message = "bin_dir must be an absolute path (the provisioners run in the module's directory and inside lab namespaces), e.g. the checkout's bin/: $(pwd)/bin."
  }
}

variable "sites" {
  description = "Number of sites (site1..siteN). The seed sits on site1, at 198.18.1.10."
  type        = number
  default     = 3

  validation {
    condition     = var.sites >= 1 && var.sites <= 16 && floor(var.sites) == var.sites
    error_message = "sites must be a whole number from 1 to 16 (each site is a router and its nodes; a lab of more is slow to join for a test)."
  }
}

variable "nodes_per_site" {
  description = "Joined nodes on each site (site<i>-n<j>); the seed comes on top of site1's."
  type        = number
  default     = 1

  validation {
    condition     = var.nodes_per_site >= 0 && var.nodes_per_site <= 16 && floor(var.nodes_per_site) == var.nodes_per_site
    error_message = "nodes_per_site must be a whole number from 0 to 16."
  }
}

variable "nat_site" {
  description = "Put the last site behind NAT (nat_kind). The seed's site1 stays public, so with one site there is nothing to put behind NAT."
  type        = bool
  default     = true
}

variable "nat_kind" {
  description = "The NAT of the last site when nat_site is set: eim (endpoint-independent mapping, a home router) or symmetric (a port per destination: only a relay connects two such sites)."
  type        = string
  default     = "eim"

  validation {
    condition     = contains(["eim", "symmetric"], var.nat_kind)
    error_message = "nat_kind must be eim or symmetric (see docs/lab.md, NAT kinds)."
  }
}

variable "workloads_per_node" {
  description = "Workloads on each joined node (<node>-w<k>): namespaces the lab joins to the node by a veth pair, made endpoints with 'meshctl endpoint add'."
  type        = number
  default     = 1

  validation {
    condition     = var.workloads_per_node >= 0 && var.workloads_per_node <= 8 && floor(var.workloads_per_node) == var.workloads_per_node
    error_message = "workloads_per_node must be a whole number from 0 to 8."
  }
}

variable "token_ttl" {
  description = "Validity of each node's join token (weft_token ttl, 1m to 720h). The provider drops an expired token from the state, so a plan after this long makes new tokens and rejoins the nodes."
  type        = string
  default     = "24h"

  validation {
    condition     = can(regex("^[0-9]+(m|h)$", var.token_ttl))
    error_message = "token_ttl must be minutes or hours, such as 30m or 24h (1m to 720h)."
  }
}

variable "node_labels" {
  description = "Extra labels per joined node (node name => labels), on top of site=<site>; they go into the node's token. A changed label replaces that node's token and rejoins it."
  type        = map(map(string))
  default     = {}

  validation {
    condition = alltrue(flatten([
      for node, labels in var.node_labels : [
        for k, v in labels :
        can(regex("^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", k)) &&
        can(regex("^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$", v))
      ]
    ]))
    error_message = "A node label is not valid: keys like app or example.com/tier (an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' or '.'), values empty or 1-63 of the same, starting and ending with a letter or digit."
  }
}

variable "workload_labels" {
  description = "Extra labels per workload (workload name => labels), on top of app=<workload name> and site=<site>. A changed label replaces that workload's endpoint."
  type        = map(map(string))
  default     = {}

  validation {
    condition = alltrue(flatten([
      for w, labels in var.workload_labels : [
        for k, v in labels :
        can(regex("^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", k)) &&
        can(regex("^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$", v))
      ]
    ]))
    error_message = "A workload label is not valid: keys like app or example.com/tier (an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' or '.'), values empty or 1-63 of the same, starting and ending with a letter or digit."
  }
}

variable "policy" {
  description = "The lab's policy: the workloads matching selector accept ingress only from workloads matching one of allow_from (any protocol); null applies none. The default isolates site1's workloads so that only site2's reach them."
  type = object({
    name       = string
    selector   = map(string)
    allow_from = list(map(string))
  })
  default = {
    name       = "lab-site1"
    selector   = { site = "site1" }
    allow_from = [{ site = "site2" }]
  }

  validation {
    condition     = var.policy == null || can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.policy.name))
    error_message = "policy.name must be 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit (the mesh's name rule)."
  }
}
