variable "name" {
  description = "The node name given to meshctl join --name: 1-63 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit (the same rule meshctl uses)."
  type        = string

  validation {
    condition     = length(var.name) >= 1 && length(var.name) <= 63
    error_message = "The node name must be 1-63 characters long (it is a host name and part of etcd keys and certificate subjects); shorten it, e.g. \"vm-1\"."
  }

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", var.name))
    error_message = "The node name is not valid: use 1-63 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, with a letter or digit on both sides of every '.' (such as vm-1 or db.east)."
  }
}

variable "labels" {
  description = "Labels of the node (meshctl join --labels k=v,...). Keys are Kubernetes label keys (optional DNS prefix and '/', then up to 63 of [A-Za-z0-9._-]); values up to 63 of [A-Za-z0-9._-], or empty. The token's labels win on the same key."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for k in keys(var.labels) :
      can(regex("^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", k))
    ])
    error_message = "A label key is not valid: write keys like app or example.com/tier (an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)."
  }

  validation {
    condition = alltrue([
      for v in values(var.labels) :
      can(regex("^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$", v))
    ])
    error_message = "A label value is not valid: a value is empty or 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit (labels are k=v, e.g. app=web)."
  }
}

variable "token" {
  description = "The join token from 'meshctl token create' (weft1....). Written to a root-only file and given to meshctl join --token-file, never on a command line; deleted after a successful join."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^weft1\\.[A-Za-z0-9_-]+$", trimspace(var.token)))
    error_message = "The token is not a Weft join token: it must be exactly what 'meshctl token create' printed (weft1. followed by URL-safe base64); check it was copied whole."
  }
}

variable "package_url" {
  description = "URL of a Weft .deb package, installed with apt-get. Set exactly one of package_url and binary_url."
  type        = string
  default     = null

  validation {
    # No $, ` or \ either: the join script logs the URL inside double quotes.
    condition     = var.package_url == null || can(regex("^https?://[^\\s'\"$`\\\\]+\\.deb$", var.package_url))
    error_message = "package_url must be an http(s) URL of a .deb package with no spaces, quotes, $, ` or \\ (e.g. https://example.com/weft_1.0_amd64.deb)."
  }
}

variable "binary_url" {
  description = "URL of a .tar.gz holding the meshctl and weft-agent binaries at its top level, installed to install_dir. Needs sha256. Set exactly one of package_url and binary_url."
  type        = string
  default     = null

  validation {
    # No $, ` or \ either: the join script logs the URL inside double quotes.
    condition     = var.binary_url == null || can(regex("^https?://[^\\s'\"$`\\\\]+\\.(tar\\.gz|tgz)$", var.binary_url))
    error_message = "binary_url must be an http(s) URL of a .tar.gz (or .tgz) archive with no spaces, quotes, $, ` or \\ (e.g. https://example.com/weft-linux-amd64.tar.gz)."
  }
}

variable "sha256" {
  description = "The hex SHA-256 of the archive at binary_url; the download is refused when it differs. Required with binary_url."
  type        = string
  default     = null

  validation {
    condition     = var.sha256 == null || can(regex("^[0-9a-f]{64}$", var.sha256))
    error_message = "sha256 must be 64 lower-case hex digits (the output of 'sha256sum FILE')."
  }
}

variable "install_dir" {
  description = "Where the binaries from binary_url are installed."
  type        = string
  default     = "/usr/local/bin"

  validation {
    condition     = can(regex("^/[-A-Za-z0-9_./]*$", var.install_dir))
    error_message = "install_dir must be an absolute path of letters, digits, '-', '_', '.' and '/' (e.g. /usr/local/bin)."
  }
}

variable "relay" {
  description = "Serve as a relay for mesh nodes that cannot reach each other directly (meshctl join --relay); the node needs an address the others reach and UDP 51838 open (node-rules role \"relay\")."
  type        = bool
  default     = false
}

variable "extra_agent_flags" {
  description = "weft-agent flags written into the node's configuration (given to meshctl join after --), e.g. [\"--wg-port\", \"51900\"]."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for f in var.extra_agent_flags : length(f) > 0 && !can(regex("[\\x00\\n\\r]", f))])
    error_message = "extra_agent_flags must not hold empty strings or strings with newlines or NUL bytes; give each flag and each value as its own list element."
  }
}

variable "wait" {
  description = "How long meshctl join waits for a WireGuard handshake with a peer before it reports the node as cut off (join --wait); \"0\" returns as soon as the agent is ready."
  type        = string
  default     = "60s"

  validation {
    condition     = can(regex("^(0|([0-9]+(\\.[0-9]+)?(ms|s|m|h))+)$", var.wait))
    error_message = "wait must be a Go duration such as 60s, 2m or 1m30s (or 0 to not wait)."
  }
}

variable "token_path" {
  description = "The root-only (0600) file the token is written to until the join succeeds."
  type        = string
  default     = "/etc/weft/join-token"

  validation {
    condition     = can(regex("^/[-A-Za-z0-9_./]*$", var.token_path))
    error_message = "token_path must be an absolute path of letters, digits, '-', '_', '.' and '/' (e.g. /etc/weft/join-token)."
  }
}
