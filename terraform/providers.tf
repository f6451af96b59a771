# The DigitalOcean provider, configured from the API token (a sensitive variable that
# the deploy workflow passes as TF_VAR_do_token). Its version is pinned in versions.tf.
provider "digitalocean" {
  token = var.do_token
}
