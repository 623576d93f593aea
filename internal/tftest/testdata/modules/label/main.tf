variable "labels" {
  type = map(string)
}

output "text" {
  value = join(",", [for k in sort(keys(var.labels)) : "${k}=${var.labels[k]}"])
}
