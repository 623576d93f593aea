output "ingress_rules" {
  description = "Underlay ingress rules for the node: a list of {name, protocol, from_port, to_port, cidrs, description}."
  value       = concat(local.common, local.relay, local.seed)

  precondition {
    condition     = var.role == "seed" ? length(var.join_cidrs) > 0 : length(var.join_cidrs) == 0
    error_message = var.role == "seed" ? "role \"seed\" needs join_cidrs: the CIDRs of the machines that join the mesh and reach its join service (TCP 51834) and etcd (TCP 2379)." : "join_cidrs is only for role \"seed\" (only the seed runs the join service and etcd); remove it for role \"${var.role}\"."
  }
}

output "name" {
  description = "The name for the node's firewall or security group: name_prefix-role."
  value       = local.name
}

output "tags" {
  description = "var.tags with keys lower-cased and trimmed, plus weft-role."
  value       = local.tags
}

output "ports" {
  description = "The underlay port numbers by purpose, for wrappers that need them."
  value = {
    wireguard = local.wireguard_port
    join      = local.join_port
    etcd      = local.etcd_port
    relay     = local.relay_port
    direct    = local.direct_port
  }
}
