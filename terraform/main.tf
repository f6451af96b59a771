locals {
  # The repository holding this directory: its flake describes the droplet.
  flake = abspath("${path.module}/..")

  webhook_sources = var.restrict_to_tradingview ? var.tradingview_ips : ["0.0.0.0/0", "::/0"]
  ssh_sources     = concat(var.admin_cidrs, var.deployer_cidr == "" ? [] : [var.deployer_cidr])
  everywhere      = ["0.0.0.0/0", "::/0"]
}

resource "digitalocean_project" "pyron" {
  name        = var.name
  description = "Pyron webhook receiver, deployed from ${var.git_repo} (${var.git_branch})"
  purpose     = "Service or API"
  environment = "Production"
  resources   = [digitalocean_droplet.pyron.urn, digitalocean_reserved_ip.pyron.urn]
}

resource "digitalocean_vpc" "pyron" {
  name     = "${var.name}-vpc"
  region   = var.region
  ip_range = var.vpc_ip_range
}

# Created from a stock image only for nixos-anywhere to replace with NixOS (kexec, disko,
# install), so the image never changes afterwards.
resource "digitalocean_droplet" "pyron" {
  name       = var.name
  region     = var.region
  size       = var.droplet_size
  image      = "ubuntu-24-04-x64"
  vpc_uuid   = digitalocean_vpc.pyron.id
  ssh_keys   = [var.ssh_fingerprint]
  ipv6       = true
  monitoring = true
  tags       = ["pyron"]

  lifecycle {
    ignore_changes = [image]
  }
}

resource "digitalocean_reserved_ip" "pyron" {
  region = var.region
}

resource "digitalocean_reserved_ip_assignment" "pyron" {
  ip_address = digitalocean_reserved_ip.pyron.ip_address
  droplet_id = digitalocean_droplet.pyron.id
}

# Inbound: SSH from the admins (and the deployer while it deploys), HTTP and HTTPS. Redis
# and MongoDB listen on the droplet's loopback and a unix socket only, and no rule opens
# them. Outbound: what NixOS and Let's Encrypt need.
resource "digitalocean_firewall" "pyron" {
  name        = "${var.name}-firewall"
  droplet_ids = [digitalocean_droplet.pyron.id]

  inbound_rule {
    protocol         = "tcp"
    port_range       = "22"
    source_addresses = local.ssh_sources
  }

  inbound_rule {
    protocol         = "tcp"
    port_range       = "80"
    source_addresses = local.everywhere
  }

  inbound_rule {
    protocol         = "tcp"
    port_range       = "443"
    source_addresses = local.webhook_sources
  }

  # DNS.
  outbound_rule {
    protocol              = "udp"
    port_range            = "53"
    destination_addresses = local.everywhere
  }

  outbound_rule {
    protocol              = "tcp"
    port_range            = "53"
    destination_addresses = local.everywhere
  }

  # The NixOS binary cache, Let's Encrypt, DigitalOcean's metadata and agent.
  outbound_rule {
    protocol              = "tcp"
    port_range            = "80"
    destination_addresses = local.everywhere
  }

  outbound_rule {
    protocol              = "tcp"
    port_range            = "443"
    destination_addresses = local.everywhere
  }

  # Time.
  outbound_rule {
    protocol              = "udp"
    port_range            = "123"
    destination_addresses = local.everywhere
  }

  outbound_rule {
    protocol              = "icmp"
    destination_addresses = local.everywhere
  }
}

# NixOS onto the droplet with nixos-anywhere: the system and the disk layout are built
# from this repository's flake (`.#nixosConfigurations.droplet`), the disk is formatted by
# disko, and the two secrets are copied in before the first boot. This runs once per
# droplet (instance_id); later changes are switched by the deploy workflow.
module "system_build" {
  source    = "github.com/nix-community/nixos-anywhere//terraform/nix-build?ref=1.13.0"
  attribute = "${local.flake}#nixosConfigurations.droplet.config.system.build.toplevel"
}

module "disko_build" {
  source    = "github.com/nix-community/nixos-anywhere//terraform/nix-build?ref=1.13.0"
  attribute = "${local.flake}#nixosConfigurations.droplet.config.system.build.diskoScript"
}

module "install" {
  source = "github.com/nix-community/nixos-anywhere//terraform/install?ref=1.13.0"

  nixos_system      = module.system_build.result.out
  nixos_partitioner = module.disko_build.result.out
  target_host       = digitalocean_droplet.pyron.ipv4_address
  instance_id       = digitalocean_droplet.pyron.id
  ssh_private_key   = var.ssh_private_key

  extra_files_script = "${path.module}/scripts/secrets.sh"
  extra_environment = {
    PYRON_WEBHOOK_TOKEN = var.webhook_token
    PYRON_ADMIN_TOKEN   = var.admin_token
  }

  depends_on = [digitalocean_firewall.pyron]
}
