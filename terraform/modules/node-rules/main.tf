locals {
  # The underlay ports of docs/architecture.md and docs/nat.md. Ports bound to
  # the mesh address (51835-51837, 9962) travel inside WireGuard and need no
  # underlay rule.
  wireguard_port = 51833 # UDP, every node
  join_port      = 51834 # TCP, the seed's join service and node services
  etcd_port      = 2379  # TCP, the seed's embedded etcd (clients)
  relay_port     = 51838 # UDP, a relay
  direct_port    = 51840 # UDP, the direct-path check every node answers

  # A node's relay client (UDP 51839) only answers what it sent to a relay
  # (the relay forwards to the address the client registered from), so a
  # stateful cloud firewall lets it through without an ingress rule.

  name = "${var.name_prefix}-${var.role}"

  common = [
    {
      name        = "${local.name}-wireguard"
      protocol    = "udp"
      from_port   = local.wireguard_port
      to_port     = local.wireguard_port
      cidrs       = var.allowed_cidrs
      description = "Weft WireGuard (UDP ${local.wireguard_port}) from mesh nodes"
    },
    {
      name        = "${local.name}-direct-check"
      protocol    = "udp"
      from_port   = local.direct_port
      to_port     = local.direct_port
      cidrs       = var.allowed_cidrs
      description = "Weft direct-path check (UDP ${local.direct_port}) from mesh nodes on a relay"
    },
  ]

  relay = var.role != "relay" ? [] : [
    {
      name        = "${local.name}-relay"
      protocol    = "udp"
      from_port   = local.relay_port
      to_port     = local.relay_port
      cidrs       = var.allowed_cidrs
      description = "Weft relay (UDP ${local.relay_port}) from mesh nodes"
    },
  ]

  seed = var.role != "seed" ? [] : [
    {
      name        = "${local.name}-join"
      protocol    = "tcp"
      from_port   = local.join_port
      to_port     = local.join_port
      cidrs       = var.join_cidrs
      description = "Weft join service and node services (TCP ${local.join_port}) from joining nodes"
    },
    {
      name        = "${local.name}-etcd"
      protocol    = "tcp"
      from_port   = local.etcd_port
      to_port     = local.etcd_port
      cidrs       = var.join_cidrs
      description = "Weft etcd clients (TCP ${local.etcd_port}, mTLS) from joined nodes"
    },
  ]

  tags = merge(
    { for k, v in var.tags : lower(trimspace(k)) => trimspace(v) },
    { "weft-role" = var.role },
  )
}
