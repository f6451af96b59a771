#!/usr/bin/env bash
# Runs gixy (the maintained gixy-ng, which nixpkgs runs over every NGINX configuration it
# builds, failing the build on any finding) over dev/nginx.conf.in as the local stack
# renders it, and over the NixOS module's virtual host as nix/nginx-server.nix evaluates it
# (both made of dev/nginx-server.conf and dev/nginx-errors.conf); then `nginx -t` on both.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
./scripts/render-nginx.sh "$work" 127.0.0.1:8080 127.0.0.1:8443 :8443 \
  "$work/cert.pem" "$work/key.pem" 127.0.0.1:8000 >"$work/nginx.conf"
nix-instantiate --eval --strict --json nix/nginx-server.nix --arg bodyLimit 131072 |
  python3 -c 'import json, sys; print(json.load(sys.stdin))' >"$work/module-server.conf"
grep -q "client_max_body_size 131072;" "$work/module-server.conf"
# Around it, what nixpkgs' NGINX module writes at the http level (server_tokens off, its
# default ssl_protocols and ssl_ciphers).
cat >"$work/module.conf" <<CONF
events {}
http {
    server_tokens off;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    server {
        listen 443 ssl;
        server_name _;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        include $work/module-server.conf;
        location / { proxy_pass http://127.0.0.1:8000; }
    }
}
CONF
# And NGINX itself must accept both, with a real certificate in place.
./scripts/dev-cert.sh "$work" >/dev/null
nginx=$(command -v nginx || echo /usr/sbin/nginx)
for conf in nginx.conf module.conf; do
  if ! .tools/venv/bin/gixy "$work/$conf" >"$work/gixy.out" 2>&1; then
    cat "$work/gixy.out" >&2
    exit 1
  fi
  "$nginx" -t -q -c "$work/$conf" -p "$work" -e "$work/nginx-error.log"
  echo "gixy and nginx -t: $conf: no findings"
done
