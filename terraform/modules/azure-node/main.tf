# A Weft node on Azure: a Linux VM with the cloud-init join (custom data) and a
# network security group from node-rules. Thin on purpose: every rule, name and the user data
# come from the provider-free submodules, which are tested fully; this file is
# only format-checked here (the azurerm provider cannot be built in CI).

terraform {
  required_version = ">= 1.5"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 3.0"
    }
  }
}

variable "name" {
  description = "The node name (meshctl join --name); also the instance's Name tag."
  type        = string
}

variable "role" {
  description = "\"node\" or \"relay\" (see node-rules). The VM joins an existing mesh with meshctl join."
  type        = string
  default     = "node"

  validation {
    condition     = contains(["node", "relay"], var.role)
    error_message = "role must be \"node\" or \"relay\": this module joins a VM to an existing mesh. The seed (meshctl up) is not made by it; use the node-rules module with role \"seed\" for the seed's firewall."
  }
}

variable "token" {
  description = "The join token from 'meshctl token create'."
  type        = string
  sensitive   = true
}

variable "labels" {
  description = "Node labels (meshctl join --labels)."
  type        = map(string)
  default     = {}
}

variable "package_url" {
  description = "URL of a Weft .deb; set this or binary_url."
  type        = string
  default     = null
}

variable "binary_url" {
  description = "URL of a .tar.gz with meshctl and weft-agent; needs sha256."
  type        = string
  default     = null
}

variable "sha256" {
  description = "SHA-256 of the archive at binary_url."
  type        = string
  default     = null
}

variable "extra_agent_flags" {
  description = "weft-agent flags (after -- on meshctl join)."
  type        = list(string)
  default     = []
}

variable "wait" {
  description = "meshctl join --wait."
  type        = string
  default     = "60s"
}

variable "allowed_cidrs" {
  description = "Underlay CIDRs of the other mesh nodes."
  type        = list(string)
}

variable "name_prefix" {
  description = "Prefix of the network security group name."
  type        = string
  default     = "weft"
}

variable "tags" {
  description = "Tags for the instance and security group."
  type        = map(string)
  default     = {}
}

variable "resource_group_name" {
  description = "The resource group of the VM and its network resources."
  type        = string
}

variable "location" {
  description = "The Azure region, e.g. westeurope."
  type        = string
}

variable "subnet_id" {
  description = "The subnet of the VM's network interface."
  type        = string
}

variable "size" {
  description = "The VM size."
  type        = string
  default     = "Standard_B1s"
}

variable "admin_username" {
  description = "The VM's admin user."
  type        = string
  default     = "weft"
}

variable "admin_ssh_public_key" {
  description = "The admin user's SSH public key."
  type        = string
}

variable "image" {
  description = "The marketplace image (an image with cloud-init)."
  type = object({
    publisher = string
    offer     = string
    sku       = string
    version   = string
  })
  default = {
    publisher = "Debian"
    offer     = "debian-12"
    sku       = "12-gen2"
    version   = "latest"
  }
}

module "rules" {
  source = "../node-rules"

  role          = var.role
  allowed_cidrs = var.allowed_cidrs
  # Cloud resource names take no '.', and node-rules bounds the prefix.
  name_prefix = trim(substr("${var.name_prefix}-${replace(var.name, ".", "-")}", 0, 40), "-")
  tags        = var.tags
}

module "cloud_init" {
  source = "../cloud-init"

  name              = var.name
  labels            = var.labels
  token             = var.token
  package_url       = var.package_url
  binary_url        = var.binary_url
  sha256            = var.sha256
  relay             = var.role == "relay"
  extra_agent_flags = var.extra_agent_flags
  wait              = var.wait
}

resource "azurerm_network_security_group" "node" {
  name                = module.rules.name
  location            = var.location
  resource_group_name = var.resource_group_name
  tags                = module.rules.tags

  dynamic "security_rule" {
    for_each = { for i, r in module.rules.ingress_rules : i => r }
    content {
      name                       = security_rule.value.name
      description                = security_rule.value.description
      priority                   = 1000 + security_rule.key * 10
      direction                  = "Inbound"
      access                     = "Allow"
      protocol                   = title(security_rule.value.protocol)
      source_port_range          = "*"
      destination_port_range     = security_rule.value.from_port == security_rule.value.to_port ? tostring(security_rule.value.from_port) : "${security_rule.value.from_port}-${security_rule.value.to_port}"
      source_address_prefixes    = security_rule.value.cidrs
      destination_address_prefix = "*"
    }
  }
}

resource "azurerm_public_ip" "node" {
  name                = "${var.name}-ip"
  location            = var.location
  resource_group_name = var.resource_group_name
  allocation_method   = "Static"
  sku                 = "Standard"
  tags                = module.rules.tags
}

resource "azurerm_network_interface" "node" {
  name                = "${var.name}-nic"
  location            = var.location
  resource_group_name = var.resource_group_name
  tags                = module.rules.tags

  ip_configuration {
    name                          = "primary"
    subnet_id                     = var.subnet_id
    private_ip_address_allocation = "Dynamic"
    public_ip_address_id          = azurerm_public_ip.node.id
  }
}

resource "azurerm_network_interface_security_group_association" "node" {
  network_interface_id      = azurerm_network_interface.node.id
  network_security_group_id = azurerm_network_security_group.node.id
}

resource "azurerm_linux_virtual_machine" "node" {
  name                  = var.name
  location              = var.location
  resource_group_name   = var.resource_group_name
  size                  = var.size
  admin_username        = var.admin_username
  network_interface_ids = [azurerm_network_interface.node.id]
  custom_data           = module.cloud_init.user_data_base64
  tags                  = module.rules.tags

  admin_ssh_key {
    username   = var.admin_username
    public_key = var.admin_ssh_public_key
  }

  os_disk {
    caching              = "ReadWrite"
    storage_account_type = "Standard_LRS"
  }

  source_image_reference {
    publisher = var.image.publisher
    offer     = var.image.offer
    sku       = var.image.sku
    version   = var.image.version
  }
}

output "id" {
  description = "The VM id."
  value       = azurerm_linux_virtual_machine.node.id
}

output "public_ip" {
  description = "The VM's public IPv4 address."
  value       = azurerm_public_ip.node.ip_address
}

output "private_ip" {
  description = "The VM's private IPv4 address."
  value       = azurerm_network_interface.node.private_ip_address
}
