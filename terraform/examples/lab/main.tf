# A lab mesh on this machine: `meshctl lab up` builds the sites, routers,
# NAT, nodes and workload namespaces; the seed runs `meshctl up`, every other
# node `meshctl join`s with its own token, workloads become endpoints, and a
# policy is applied. Everything runs through terraform_data + local-exec and
# scripts/lab.sh, as root; the tokens and the policy are the weft
# provider's (weft_token, weft_policy), through the seed's admin API.
#
# Replacement is by triggers_replace: every step names the lab's identity
# (terraform_data.lab.id, new each time the lab is made), so a re-created
# lab re-runs every join instead of leaving them "updated in place". Destroy
# provisioners may reference only self, so each keeps what its destroy needs
# in triggers_replace (the script, the binaries, the names and paths).

locals {
  state  = "/run/weft-${var.lab_name}"
  pins   = "/sys/fs/bpf/weft-${var.lab_name}"
  script = "${abspath(path.module)}/scripts/lab.sh"

  # The seed is the first node of site1: the lab gives node j of site i
  # the address 198.18.<i>.<9+j> (docs/lab.md, Addressing).
  seed      = "seed"
  seed_addr = "198.18.1.10"

  site_names = [for i in range(var.sites) : "site${i + 1}"]
  nat_site   = var.nat_site && var.sites > 1 ? local.site_names[var.sites - 1] : ""

  node_list = flatten([
    for s in local.site_names : [
      for j in range(var.nodes_per_site) : { name = "${s}-n${j + 1}", site = s }
    ]
  ])
  # WireGuard device names are machine-wide and at most 15 bytes: a short
  # hash of the lab's name keeps two labs apart, the index the nodes.
  wg_prefix = "w${substr(sha1(var.lab_name), 0, 6)}-"
  nodes = {
    for i, n in local.node_list : n.name => {
      site     = n.site
      wg_iface = "${local.wg_prefix}${i + 1}"
      labels   = merge({ site = n.site }, lookup(var.node_labels, n.name, {}))
    }
  }
  workloads = {
    for w in flatten([
      for n in local.node_list : [
        for k in range(var.workloads_per_node) : { name = "${n.name}-w${k + 1}", node = n.name, site = n.site }
      ]
    ]) :
    w.name => {
      node   = w.node
      netns  = "wl-${var.lab_name}-${w.name}"
      labels = merge({ app = w.name, site = w.site }, lookup(var.workload_labels, w.name, {}))
    }
  }

  # The lab's topology, as meshctl lab up -f reads it (JSON is YAML).
  topology = {
    name = var.lab_name
    sites = [
      for i, s in local.site_names : {
        name = s
        nat  = s == local.nat_site ? var.nat_kind : "none"
        nodes = concat(
          i == 0 ? [{ name = local.seed, workloads = [] }] : [],
          [
            for n in local.node_list : {
              name      = n.name
              workloads = [for w, v in local.workloads : { name = w } if v.node == n.name]
            } if n.site == s
          ],
        )
      }
    ]
  }

  # What every step's script needs to find the lab.
  common = {
    script = local.script
    bin    = var.bin_dir
    lab    = var.lab_name
    state  = local.state
    pins   = local.pins
  }

  policy_document = var.policy == null ? null : yamlencode({
    apiVersion = "weft.dev/v1"
    kind       = "Policy"
    metadata   = { name = var.policy.name }
    spec = {
      endpointSelector = { matchLabels = var.policy.selector }
      ingress          = [{ from = [for l in var.policy.allow_from : { matchLabels = l }] }]
    }
  })
}

resource "terraform_data" "lab" {
  triggers_replace = merge(local.common, { topology = jsonencode(local.topology) })

  lifecycle {
    precondition {
      condition     = length(setsubtract(keys(var.node_labels), keys(local.nodes))) == 0
      error_message = "node_labels names nodes this lab does not have (${join(", ", setsubtract(keys(var.node_labels), keys(local.nodes)))}): its nodes are ${join(", ", keys(local.nodes))}."
    }
    precondition {
      condition     = length(setsubtract(keys(var.workload_labels), keys(local.workloads))) == 0
      error_message = "workload_labels names workloads this lab does not have (${join(", ", setsubtract(keys(var.workload_labels), keys(local.workloads)))}): its workloads are ${join(", ", keys(local.workloads))}."
    }
  }

  provisioner "local-exec" {
    command = "${self.triggers_replace.script} lab-up"
    environment = {
      BIN      = self.triggers_replace.bin, LAB = self.triggers_replace.lab, STATE = self.triggers_replace.state, PINS = self.triggers_replace.pins
      TOPOLOGY = self.triggers_replace.topology
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.script} lab-down"
    environment = {
      BIN = self.triggers_replace.bin, LAB = self.triggers_replace.lab, STATE = self.triggers_replace.state, PINS = self.triggers_replace.pins
    }
  }
}

resource "terraform_data" "seed" {
  triggers_replace = merge(local.common, {
    lab      = terraform_data.lab.id
    lab_name = var.lab_name
    seed     = local.seed
    addr     = local.seed_addr
    wg_iface = "${local.wg_prefix}0"
  })

  provisioner "local-exec" {
    command = "${self.triggers_replace.script} seed-up"
    environment = {
      BIN  = self.triggers_replace.bin, LAB = self.triggers_replace.lab_name, STATE = self.triggers_replace.state, PINS = self.triggers_replace.pins
      SEED = self.triggers_replace.seed, SEED_ADDR = self.triggers_replace.addr, WG_IFACE = self.triggers_replace.wg_iface
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.script} seed-down"
    environment = {
      BIN  = self.triggers_replace.bin, LAB = self.triggers_replace.lab_name, STATE = self.triggers_replace.state, PINS = self.triggers_replace.pins
      SEED = self.triggers_replace.seed
    }
  }
}

# One single-use token per node, with the node's labels (they win over
# any the node asks for). Made through the seed's admin API as soon as the
# seed is up: the provider reads the credential the seed step wrote.
resource "weft_token" "node" {
  for_each = local.nodes

  labels   = each.value.labels
  ttl      = var.token_ttl
  max_uses = 1

  depends_on = [terraform_data.seed]
  lifecycle {
    # A new seed is a new mesh: the old tokens mean nothing to it.
    replace_triggered_by = [terraform_data.seed]
  }
}

resource "terraform_data" "join" {
  for_each = local.nodes

  triggers_replace = merge(local.common, {
    lab      = terraform_data.lab.id
    lab_name = var.lab_name
    seed     = terraform_data.seed.id
    token    = weft_token.node[each.key].id
    node     = each.key
    wg_iface = each.value.wg_iface
  })

  provisioner "local-exec" {
    command = "${self.triggers_replace.script} join"
    environment = {
      BIN        = self.triggers_replace.bin, LAB = self.triggers_replace.lab_name, STATE = self.triggers_replace.state, PINS = self.triggers_replace.pins
      NODE       = self.triggers_replace.node, WG_IFACE = self.triggers_replace.wg_iface
      WEFT_TOKEN = weft_token.node[each.key].token
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.script} leave"
    environment = {
      BIN  = self.triggers_replace.bin, LAB = self.triggers_replace.lab_name, STATE = self.triggers_replace.state, PINS = self.triggers_replace.pins
      NODE = self.triggers_replace.node
    }
  }
}

resource "terraform_data" "workload" {
  for_each = local.workloads

  triggers_replace = merge(local.common, {
    lab_name = var.lab_name
    join     = terraform_data.join[each.value.node].id
    node     = each.value.node
    netns    = each.value.netns
    labels   = join(",", [for k, v in each.value.labels : "${k}=${v}"])
  })

  provisioner "local-exec" {
    command = "${self.triggers_replace.script} endpoint-add"
    environment = {
      BIN  = self.triggers_replace.bin, LAB = self.triggers_replace.lab_name, STATE = self.triggers_replace.state, PINS = self.triggers_replace.pins
      NODE = self.triggers_replace.node, NETNS = self.triggers_replace.netns, LABELS = self.triggers_replace.labels
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.script} endpoint-remove"
    environment = {
      BIN  = self.triggers_replace.bin, LAB = self.triggers_replace.lab_name, STATE = self.triggers_replace.state, PINS = self.triggers_replace.pins
      NODE = self.triggers_replace.node, NETNS = self.triggers_replace.netns
    }
  }
}

resource "weft_policy" "lab" {
  count = var.policy == null ? 0 : 1

  name     = var.policy.name
  document = local.policy_document

  depends_on = [terraform_data.seed]
  lifecycle {
    # A new seed is a new mesh, without this policy.
    replace_triggered_by = [terraform_data.seed]
  }
}
