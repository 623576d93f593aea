terraform {
  # Provider-free on purpose: the cloud wrappers turn these rules into their
  # own firewall resources, and this logic is tested with the CLI alone.
  required_version = ">= 1.5"
}
