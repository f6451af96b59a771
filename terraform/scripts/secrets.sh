#!/usr/bin/env bash
# nixos-anywhere's extra_files_script: whatever this writes under the current directory is
# copied to the new system's / before its first boot. It writes the two secrets where
# nix/droplet.nix expects them, readable by root alone. Their values come from the
# environment (extra_environment in main.tf) and are never printed.
set -euo pipefail
umask 077
install -d -m 0700 var/lib/pyron-secrets
printf '%s' "${PYRON_WEBHOOK_TOKEN:?}" >var/lib/pyron-secrets/webhook-token
printf '%s' "${PYRON_ADMIN_TOKEN:?}" >var/lib/pyron-secrets/admin-token
