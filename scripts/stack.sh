#!/usr/bin/env bash
# Runs the whole Pyron stack on loopback: redis-server, a MongoDB wire server (mongod if on
# PATH, else FerretDB built by install-deps.sh), pyron-api, pyron-worker, pyron-forwarder,
# and NGINX terminating TLS in front with a self-signed certificate. Data and logs live in
# .dev/. Sources and routes come from .dev/pyron.toml when it exists (or the file
# PYRON_DEV_CONFIG names). Ctrl-C stops everything.
#
# Ports: PYRON_DEV_HTTPS_PORT (8443), PYRON_DEV_HTTP_PORT (8080, redirects to HTTPS),
# PYRON_DEV_API_PORT (8000), PYRON_DEV_REDIS_PORT (6379), PYRON_DEV_MONGO_PORT (27017).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

https_port=${PYRON_DEV_HTTPS_PORT:-8443}
http_port=${PYRON_DEV_HTTP_PORT:-8080}
api_port=${PYRON_DEV_API_PORT:-8000}
redis_port=${PYRON_DEV_REDIS_PORT:-6379}
mongo_port=${PYRON_DEV_MONGO_PORT:-27017}

for port in "$https_port" "$http_port" "$api_port" "$redis_port" "$mongo_port"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is taken; set the PYRON_DEV_*_PORT variables (see the top of this script)" >&2
    exit 1
  fi
done

./scripts/install-deps.sh
echo "==> building pyron (release)"
cargo build --release --locked --bins --quiet

dev=$root/.dev
mkdir -p "$dev/redis" "$dev/mongo" "$dev/logs" "$dev/nginx"
[ -s "$dev/tls/cert.pem" ] || ./scripts/dev-cert.sh "$dev/tls"
if [ ! -s "$dev/webhook-token" ]; then
  echo "==> making a webhook secret in .dev/webhook-token"
  (umask 077 && openssl rand -hex 24 >"$dev/webhook-token")
fi
token=$(cat "$dev/webhook-token")
if [ ! -s "$dev/admin-token" ]; then
  echo "==> making an admin secret (dead-letter API) in .dev/admin-token"
  (umask 077 && openssl rand -hex 24 >"$dev/admin-token")
fi

pids=()
# shellcheck disable=SC2317 # called by the traps below
stop() {
  trap - EXIT INT TERM
  echo
  echo "==> stopping"
  # Reverse order: the api and worker drain before the stores go away.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  echo "==> stopped; data kept in .dev/ (delete it to start afresh)"
}
trap stop EXIT
trap 'stop; exit 0' INT TERM

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$2 did not start; see .dev/logs/$3.log" >&2
  exit 1
}

echo "==> redis-server on 127.0.0.1:$redis_port (AOF on)"
redis-server "$root/dev/redis.conf" --port "$redis_port" --dir "$dev/redis" >"$dev/logs/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port" redis-server redis

if command -v mongod >/dev/null; then
  echo "==> mongod on 127.0.0.1:$mongo_port"
  mongod --bind_ip 127.0.0.1 --port "$mongo_port" --dbpath "$dev/mongo" --quiet >"$dev/logs/mongo.log" 2>&1 &
else
  echo "==> FerretDB (SQLite) on 127.0.0.1:$mongo_port"
  .tools/bin/pyron-ferretdb --listen-addr "127.0.0.1:$mongo_port" --sqlite-dir "$dev/mongo" >"$dev/logs/mongo.log" 2>&1 &
fi
pids+=($!)
wait_port "$mongo_port" "MongoDB wire server" mongo

export PYRON_BIND=127.0.0.1:$api_port REDIS_HOST=127.0.0.1 REDIS_PORT=$redis_port
export MONGO_URI=mongodb://127.0.0.1:$mongo_port MONGO_DB=pyron
export PYRON_WEBHOOK_TOKEN_FILE=$dev/webhook-token PYRON_ADMIN_TOKEN_FILE=$dev/admin-token
unset PYRON_WEBHOOK_TOKEN PYRON_ADMIN_TOKEN PYRON_CONFIG
config=${PYRON_DEV_CONFIG:-$dev/pyron.toml}
if [ -f "$config" ]; then
  echo "==> sources and routes from $config"
  export PYRON_CONFIG=$config
fi

echo "==> pyron-api on http://127.0.0.1:$api_port"
target/release/pyron-api >"$dev/logs/pyron-api.log" 2>&1 &
pids+=($!)
wait_port "$api_port" pyron-api pyron-api
echo "==> pyron-worker"
target/release/pyron-worker >"$dev/logs/pyron-worker.log" 2>&1 &
pids+=($!)
echo "==> pyron-forwarder (delivers what the routes ask for; idle without routes)"
target/release/pyron-forwarder >"$dev/logs/pyron-forwarder.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$api_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "==> nginx: https://localhost:$https_port (http://localhost:$http_port redirects)"
https_suffix=":$https_port"
[ "$https_port" = 443 ] && https_suffix=""
./scripts/render-nginx.sh "$dev/nginx" "127.0.0.1:$http_port" "127.0.0.1:$https_port" \
  "$https_suffix" "$dev/tls/cert.pem" "$dev/tls/key.pem" "127.0.0.1:$api_port" >"$dev/nginx/nginx.conf"
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
"$nginx_bin" -c "$dev/nginx/nginx.conf" -p "$dev/nginx" -e "$dev/nginx/error.log" >"$dev/logs/nginx.log" 2>&1 &
pids+=($!)
wait_port "$https_port" nginx nginx

cat <<MSG

Pyron is running behind NGINX with a self-signed certificate. Post an alert over HTTPS:

  curl -sS --cacert .dev/tls/cert.pem -H 'Content-Type: text/plain' \\
       --data 'BTCUSDT Crossing 67,000.00' https://localhost:$https_port/webhook/$token

or a JSON alert with the secret in its passphrase field:

  curl -sS --cacert .dev/tls/cert.pem -H 'Content-Type: application/json' \\
       --data '{"passphrase":"$token","ticker":"BTCUSDT","action":"buy","price":67234.5}' \\
       https://localhost:$https_port/webhook

Dashboard: https://localhost:$https_port/ (log in with the admin token in .dev/admin-token)

Logs: .dev/logs/ and .dev/nginx/   Readiness: https://localhost:$https_port/readyz   Stop: Ctrl-C
MSG

# Exit (and stop the rest) as soon as any process dies.
wait -n "${pids[@]}"
echo "a process exited; see .dev/logs/" >&2
exit 1
