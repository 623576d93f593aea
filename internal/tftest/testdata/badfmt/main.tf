# Deliberately not in terraform fmt's canonical form (FmtCheck must fail).
resource "terraform_data" "x" {
    input="unaligned"
  triggers_replace = [ 1,2 ]
}
