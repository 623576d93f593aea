locals {
  install_mode = var.package_url != null ? "package" : "binary"

  # Shell words, each single-quoted, so a flag value cannot break out of the
  # command. The name and labels are validated to characters that need no
  # quoting, but are quoted all the same.
  quote      = "'"
  labels_arg = join(",", [for k in sort(keys(var.labels)) : "${k}=${var.labels[k]}"])
  join_words = concat(
    ["--name", var.name],
    length(var.labels) > 0 ? ["--labels", local.labels_arg] : [],
    ["--wait", var.wait],
    var.relay ? ["--relay"] : [],
    length(var.extra_agent_flags) > 0 ? concat(["--"], var.extra_agent_flags) : [],
  )
  join_args = join(" ", [for w in local.join_words : "'${replace(w, "'", "'\\''")}'"])

  script_path = "/usr/local/lib/weft/cloud-init-join.sh"

  # Everything but the token: the script holds no secret.
  script = templatefile("${path.module}/templates/weft-join.sh.tftpl", {
    install_mode = local.install_mode
    package_url  = var.package_url == null ? "" : var.package_url
    binary_url   = var.binary_url == null ? "" : var.binary_url
    sha256       = var.sha256 == null ? "" : var.sha256
    install_dir  = var.install_dir
    token_path   = var.token_path
    join_args    = local.join_args
  })

  cloud_config = {
    package_update = true
    packages       = local.install_mode == "package" ? ["ca-certificates", "curl"] : ["ca-certificates", "curl", "tar"]
    write_files = [
      {
        path        = var.token_path
        owner       = "root:root"
        permissions = "0600"
        content     = "${trimspace(var.token)}\n"
      },
      {
        path        = local.script_path
        owner       = "root:root"
        permissions = "0700"
        content     = local.script
      },
    ]
    # runcmd runs once per instance; on a reboot the weft-agent systemd unit
    # that meshctl join installed starts the agent. The script is idempotent
    # should it run again (cloud-init clean, a re-run by hand).
    runcmd = [[local.script_path]]
  }

  user_data = "#cloud-config\n${yamlencode(local.cloud_config)}"
}
