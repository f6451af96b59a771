#!/usr/bin/env bash
# Checks the systemd units of the three services as the NixOS module builds them:
# evaluates nix/hardening.nix (pure Nix), renders pyron-api.service, pyron-api.socket,
# pyron-worker.service and pyron-forwarder.service, runs `systemd-analyze verify` on them,
# and fails if a service's exposure (`systemd-analyze security --offline=true`) is above
# the limit (the forwarder's open IP access counts against it, and it stays within too).
#
# usage: scripts/check-systemd.sh [DIR-TO-KEEP-THE-UNITS-IN]
set -euo pipefail
cd "$(dirname "$0")/.."

limit=${PYRON_EXPOSURE_LIMIT:-1.5}
out=${1:-$(mktemp -d)}
mkdir -p "$out"
if [ ! -x target/debug/pyron-api ] || [ ! -x target/debug/pyron-worker ] || [ ! -x target/debug/pyron-forwarder ]; then
  cargo build --locked --bins --quiet
fi

cat >"$out/pyron-api.socket" <<'UNIT'
[Unit]
Description=Pyron webhook receiver socket (NGINX connects here)

[Socket]
ListenStream=/run/pyron/api.sock
SocketMode=0660
SocketGroup=nginx

[Install]
WantedBy=sockets.target
UNIT

for unit in api worker forwarder; do
  nix-instantiate --eval --strict --json --argstr unit "$unit" nix/hardening.nix >"$out/$unit.json"
  python3 scripts/render-unit.py "$unit" "$out/$unit.json" "$PWD/target/debug/pyron-$unit" \
    >"$out/pyron-$unit.service"
done

echo "==> systemd-analyze verify"
systemd-analyze verify "$out/pyron-api.socket" "$out/pyron-api.service" "$out/pyron-worker.service" \
  "$out/pyron-forwarder.service"

echo "==> systemd-analyze security (limit $limit)"
failed=0
for unit in api worker forwarder; do
  report=$(systemd-analyze security --offline=true "$out/pyron-$unit.service" 2>&1 || true)
  score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$report")
  if [ -z "$score" ]; then
    echo "pyron-$unit.service: no exposure score in:" >&2
    echo "$report" >&2
    exit 1
  fi
  echo "pyron-$unit.service: exposure $score"
  if awk -v s="$score" -v l="$limit" 'BEGIN { exit !(s > l) }'; then
    echo "pyron-$unit.service: exposure $score is above $limit" >&2
    grep '✗' <<<"$report" >&2 || true
    failed=1
  fi
done
exit $failed
