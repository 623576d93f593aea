terraform {
  required_version = ">= 1.5"

  required_providers {
    weft = {
      source  = "weftmesh/weft"
      version = "~> 0.1"
    }
  }
}

# The seed's admin API, reached from inside the seed's namespace: terraform
# runs in the root namespace, which has no route into the lab. The seed step
# writes the credential; the provider reads it at its first call, after that
# step (every weft resource depends on it).
provider "weft" {
  credentials_file  = "/run/weft-${var.lab_name}/admin.json"
  network_namespace = "wl-${var.lab_name}-seed"
}
