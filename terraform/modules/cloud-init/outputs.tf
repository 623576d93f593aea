output "user_data" {
  description = "The #cloud-config document for the VM's user data. Sensitive: it holds the join token."
  value       = local.user_data
  sensitive   = true

  # Checks between inputs (a validation block sees only its own variable).
  precondition {
    condition     = (var.package_url == null) != (var.binary_url == null)
    error_message = "Set exactly one install source: package_url (a .deb) or binary_url (a .tar.gz with sha256), not ${var.package_url == null && var.binary_url == null ? "neither" : "both"}."
  }

  precondition {
    condition     = var.binary_url == null || var.sha256 != null
    error_message = "binary_url needs sha256, the hex SHA-256 of the archive ('sha256sum FILE'), so the download is verified before it is installed."
  }
}

output "user_data_base64" {
  description = "user_data, base64-encoded (for clouds that take encoded user data). Sensitive: it holds the join token."
  value       = base64encode(local.user_data)
  sensitive   = true
}

output "join_command" {
  description = "The meshctl join command the VM runs (without the token, which it reads from token_path)."
  value       = "meshctl join --token-file ${var.token_path} ${local.join_args}"
}
