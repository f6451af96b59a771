# Secrets have no default and are marked sensitive; GitHub Actions passes them as
# TF_VAR_* from repository secrets.

variable "do_token" {
  description = "DigitalOcean API token with write access."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.do_token) >= 32
    error_message = "do_token looks too short to be a DigitalOcean API token."
  }
}

variable "ssh_fingerprint" {
  description = "MD5 fingerprint of an SSH key already added to the DigitalOcean account; the droplet (and NixOS after it) accepts this key for root."
  type        = string

  validation {
    condition     = can(regex("^([0-9a-f]{2}:){15}[0-9a-f]{2}$", var.ssh_fingerprint))
    error_message = "ssh_fingerprint must be an MD5 fingerprint such as 3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa."
  }
}

variable "ssh_private_key" {
  description = "The private half of the ssh_fingerprint key, for nixos-anywhere to install NixOS."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("BEGIN [A-Z ]*PRIVATE KEY", var.ssh_private_key))
    error_message = "ssh_private_key must be a PEM or OpenSSH private key."
  }
}

variable "webhook_token" {
  description = "The webhook secret (8 or more of A-Z a-z 0-9 - . _ ~); placed on the droplet as /var/lib/pyron-secrets/webhook-token at installation."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9._~-]{8,}$", var.webhook_token))
    error_message = "webhook_token must be 8 or more of A-Z a-z 0-9 - . _ ~."
  }
}

variable "admin_token" {
  description = "The operator's secret for the dead-letter API (16 or more characters); placed as /var/lib/pyron-secrets/admin-token."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.admin_token) >= 16
    error_message = "admin_token must be at least 16 characters."
  }
}

variable "git_repo" {
  description = "HTTPS URL of the repository being deployed, recorded on the project and the droplet so the deployment says where it came from."
  type        = string

  validation {
    condition     = can(regex("^https://[^\\s]+$", var.git_repo))
    error_message = "git_repo must be an https:// URL."
  }
}

variable "git_branch" {
  description = "The branch being deployed, recorded next to git_repo."
  type        = string
  default     = "main"

  validation {
    condition     = can(regex("^[A-Za-z0-9._/-]+$", var.git_branch))
    error_message = "git_branch must be a git branch name."
  }
}

variable "name" {
  description = "Name of the droplet and prefix of the other resources."
  type        = string
  default     = "pyron"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,40}$", var.name))
    error_message = "name must be 2 to 41 lower-case letters, digits or dashes, starting with a letter."
  }
}

variable "region" {
  description = "DigitalOcean region slug."
  type        = string
  default     = "fra1"

  validation {
    condition     = contains(["ams3", "blr1", "fra1", "lon1", "nyc1", "nyc3", "sfo2", "sfo3", "sgp1", "syd1", "tor1", "atl1"], var.region)
    error_message = "region must be a DigitalOcean region slug such as fra1, nyc3 or sgp1."
  }
}

variable "droplet_size" {
  description = "Droplet size slug. nixos-anywhere boots a NixOS installer in RAM first: 2 GB is the least that works."
  type        = string
  default     = "s-1vcpu-2gb"

  validation {
    condition     = can(regex("^[a-z0-9]+(-[a-z0-9]+)*$", var.droplet_size)) && !contains(["s-1vcpu-512mb-10gb", "s-1vcpu-1gb", "s-1vcpu-1gb-amd", "s-1vcpu-1gb-intel"], var.droplet_size)
    error_message = "droplet_size must be a size slug with at least 2 GB of memory (e.g. s-1vcpu-2gb, s-2vcpu-4gb)."
  }
}

variable "vpc_ip_range" {
  description = "Private address range of the VPC the droplet lives in."
  type        = string
  default     = "10.42.0.0/24"

  validation {
    condition     = can(cidrnetmask(var.vpc_ip_range)) && can(regex("^(10\\.|172\\.(1[6-9]|2[0-9]|3[01])\\.|192\\.168\\.)", var.vpc_ip_range))
    error_message = "vpc_ip_range must be a private IPv4 CIDR (10/8, 172.16/12 or 192.168/16)."
  }
}

variable "admin_cidrs" {
  description = "Addresses (CIDR) allowed to reach SSH (port 22). Nothing else may."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrnetmask(c)) || can(cidrhost(c, 0))])
    error_message = "admin_cidrs must list at least one CIDR, such as 203.0.113.7/32."
  }

  validation {
    condition     = !anytrue([for c in var.admin_cidrs : contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "admin_cidrs must not open SSH to the whole internet."
  }
}

variable "deployer_cidr" {
  description = "The address of the machine running this deployment (a CI runner), allowed SSH while it installs and switches NixOS; set empty again afterwards."
  type        = string
  default     = ""

  validation {
    condition     = var.deployer_cidr == "" || can(cidrhost(var.deployer_cidr, 0))
    error_message = "deployer_cidr must be empty or a CIDR such as 203.0.113.7/32."
  }
}

variable "restrict_to_tradingview" {
  description = "Accept HTTPS (443) only from TradingView's webhook addresses. Port 80 stays open: it only redirects and answers Let's Encrypt's challenges."
  type        = bool
  default     = false
}

variable "tradingview_ips" {
  description = "TradingView's webhook sender addresses (check TradingView's documentation for the current list)."
  type        = list(string)
  default     = ["52.89.214.238/32", "34.212.75.30/32", "54.218.53.128/32", "52.32.178.7/32"]

  validation {
    condition     = length(var.tradingview_ips) > 0 && alltrue([for c in var.tradingview_ips : can(cidrhost(c, 0))])
    error_message = "tradingview_ips must list CIDRs."
  }
}

variable "domain" {
  description = "The domain the droplet serves (services.pyron.domain in nix/droplet.nix), used for the webhook_url output; empty: the reserved IP."
  type        = string
  default     = ""

  validation {
    condition     = var.domain == "" || can(regex("^([a-z0-9]([a-z0-9-]*[a-z0-9])?\\.)+[a-z]{2,}$", var.domain))
    error_message = "domain must be empty or a lower-case DNS name such as alerts.example.com."
  }
}
