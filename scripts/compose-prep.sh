#!/usr/bin/env bash
# Prepares .dev/ for `docker compose up` (local development only): a self-signed
# certificate, a webhook secret, and NGINX's configuration for the compose network.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev/compose
[ -s .dev/tls/cert.pem ] || ./scripts/dev-cert.sh .dev/tls
if [ ! -s .dev/webhook-token ]; then
  (umask 077 && openssl rand -hex 24 >.dev/webhook-token)
fi
ERRORS=/etc/pyron/nginx-errors.conf ./scripts/render-nginx.sh /var/cache/nginx 0.0.0.0:80 0.0.0.0:443 :8443 \
  /etc/pyron/tls/cert.pem /etc/pyron/tls/key.pem api:8000 >.dev/compose/nginx.conf
echo "==> ready: docker compose up --build, then post to https://localhost:8443/webhook/$(cat .dev/webhook-token)"
