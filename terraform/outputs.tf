output "reserved_ip" {
  description = "The droplet's stable public address (point your domain's A record here)."
  value       = digitalocean_reserved_ip.pyron.ip_address
}

output "webhook_url" {
  description = "Where TradingView posts, once <token> is replaced by the webhook secret."
  value       = "https://${var.domain != "" ? var.domain : digitalocean_reserved_ip.pyron.ip_address}/webhook/<token>"
}

output "droplet_id" {
  description = "The droplet's id."
  value       = digitalocean_droplet.pyron.id
}

output "droplet_ipv4" {
  description = "The droplet's own public address (the reserved IP is the one to use)."
  value       = digitalocean_droplet.pyron.ipv4_address
}

output "private_ip" {
  description = "The droplet's address inside the VPC."
  value       = digitalocean_droplet.pyron.ipv4_address_private
}
