#!/usr/bin/env bash
# Runs gixy (the maintained gixy-ng, which nixpkgs runs over every NGINX configuration it
# builds, failing the build on any finding) over dev/nginx.conf.in as the local stack
# renders it, with dev/nginx-errors.conf included: the server block the NixOS module
# writes is made of the same directives.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
./scripts/render-nginx.sh "$work" 127.0.0.1:8080 127.0.0.1:8443 :8443 \
  "$work/cert.pem" "$work/key.pem" 127.0.0.1:8000 >"$work/nginx.conf"
if ! .tools/venv/bin/gixy "$work/nginx.conf" >"$work/gixy.out" 2>&1; then
  cat "$work/gixy.out" >&2
  exit 1
fi
echo "gixy: no findings"
