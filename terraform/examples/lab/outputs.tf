output "lab" {
  description = "The lab's name ('meshctl lab status NAME', 'meshctl lab exec --lab NAME NODE -- CMD')."
  value       = var.lab_name
  depends_on  = [terraform_data.lab]
}

output "seed" {
  description = "The seed: its lab node, underlay address and agent socket (for meshctl --socket)."
  value = {
    node    = local.seed
    address = local.seed_addr
    socket  = "${local.state}/${local.seed}/agent.sock"
  }
  depends_on = [terraform_data.seed]
}

output "admin_credentials" {
  description = "The admin API credential file the seed wrote (meshctl --admin-credentials FILE; the weft provider's credentials_file)."
  value       = "${local.state}/admin.json"
  depends_on  = [terraform_data.seed]
}

output "nodes" {
  description = "The joined nodes: site, labels, agent socket and WireGuard device."
  value = {
    for n, v in local.nodes : n => {
      site     = v.site
      labels   = v.labels
      socket   = "${local.state}/${n}/agent.sock"
      wg_iface = v.wg_iface
    }
  }
  depends_on = [terraform_data.join]
}

output "workloads" {
  description = "The workloads: node, network namespace and labels."
  value       = { for w, v in local.workloads : w => v }
  depends_on  = [terraform_data.workload]
}

output "paths" {
  description = "The host paths this lab owns ('meshctl lab down' removes them with it): the agents' state and their bpffs pins."
  value       = [local.state, local.pins]
}
