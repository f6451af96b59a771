# tflint's rules for terraform/ (scripts/check-terraform.sh). The terraform ruleset is
# bundled with tflint, so nothing is downloaded: every rule of it, including the standard
# module structure, typed and documented variables and outputs, pinned module sources and
# unused declarations. This project's own policy (ports, sources, secrets) is
# scripts/check-terraform.py.
config {
  call_module_type = "none"
}

plugin "terraform" {
  enabled = true
  preset  = "all"
}
