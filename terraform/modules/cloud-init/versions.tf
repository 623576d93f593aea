terraform {
  # Provider-free on purpose: only built-in functions, so the module is
  # tested fully with the terraform CLI alone (no cloud provider needed).
  required_version = ">= 1.5"
}
