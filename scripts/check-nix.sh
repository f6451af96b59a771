#!/usr/bin/env bash
# Checks the Nix code as far as this machine can without nixpkgs (which cannot be
# fetched here): every .nix file parses, nixpkgs-fmt reports no change, deadnix finds
# nothing unused, flake.lock pins every input of flake.nix with a real lock node, and the
# pure parts evaluate: nix/settings.nix renders a pyron.toml that both binaries accept.
# (nix/hardening.nix is evaluated and scored by scripts/check-systemd.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.nix' 2>/dev/null || find . -name '*.nix' -not -path './.tools/*' -not -path './target/*')
echo "==> nix-instantiate --parse (${#files[@]} files)"
for f in "${files[@]}"; do
  nix-instantiate --parse "$f" >/dev/null
done

echo "==> nixpkgs-fmt --check"
.tools/bin/nixpkgs-fmt --check "${files[@]}"

echo "==> deadnix --fail"
.tools/bin/deadnix --fail "${files[@]}"

echo "==> flake.lock against flake.nix (and the team's pins when beside the repository)"
nix-instantiate --eval --strict --json -E \
  'let f = import ./flake.nix; in { inputs = f.inputs; outputArgs = builtins.functionArgs f.outputs; }' \
  >"${TMPDIR:-/tmp}/pyron-flake-inputs.json"
pins=()
[ -f ../shared/nix-pins.json ] && pins=(../shared/nix-pins.json)
python3 scripts/check-flake-lock.py "${TMPDIR:-/tmp}/pyron-flake-inputs.json" flake.lock "${pins[@]}"

echo "==> nix/settings.nix renders a configuration both binaries accept"
if [ ! -x target/debug/pyron-api ] || [ ! -x target/debug/pyron-worker ] || [ ! -x target/debug/pyron-forwarder ]; then
  cargo build --locked --bins --quiet
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/credentials"
echo "settings-check-token" >"$work/credentials/webhook-token"
echo "settings-check-tradingview" >"$work/credentials/source-tradingview"
echo "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" >"$work/credentials/destination-bridge"
echo "123456:settings-check-bot" >"$work/credentials/destination-me"
check() {
  local name=$1 expr=$2
  nix-instantiate --eval --strict --json -E "import ./nix/settings.nix ($expr)" >"$work/$name.json"
  python3 scripts/json-to-toml.py <"$work/$name.json" >"$work/$name.toml"
  for binary in pyron-api pyron-worker pyron-forwarder; do
    env -i PATH="$PATH" PYRON_CONFIG="$work/$name.toml" CREDENTIALS_DIRECTORY="$work/credentials" \
      "target/debug/$binary" --check-config >/dev/null \
      || { echo "$binary refuses nix/settings.nix ($name):" >&2; cat "$work/$name.toml" >&2; exit 1; }
  done
  echo "$name: accepted ($(tr '\n' ' ' <"$work/$name.toml"))"
}
check defaults '{ redisSocket = "/run/redis-pyron/redis.sock"; }'
check customised '{ redisSocket = "/run/redis-pyron/redis.sock"; mongoPort = 27018;
  allowedSenders = [ "52.89.214.238" "34.212.75.30" "10.0.0.0/8" ];
  settings = { log = "info,pyron=debug"; body_limit = 131072; worker_batch_size = 200; }; }'
check external '{ redisSocket = null; mongoPort = null; }'
check routes '{ redisSocket = "/run/redis-pyron/redis.sock";
  sources.tradingview = { secretFile = "/s"; allowedSenders = [ "52.89.214.238" ]; clientCertificate = "TradingView Webhooks"; idempotencyField = null; maxAgeSecs = 30; };
  destinations = { bridge = { kind = "http"; url = "https://bridge.example.com/orders"; secretFile = "/b"; headers = { X-Account = "7"; }; };
                   me = { kind = "telegram"; chat_id = "123456789"; secretFile = "/t"; rate_per_second = 1; }; };
  routes = [ { name = "orders"; sources = [ "tradingview" ]; tickers = [ "BTC*" ]; destinations = [ "bridge" "me" ]; max_age_secs = 30; template = null; } ]; }'
# And a typo in `settings` is caught the same way.
nix-instantiate --eval --strict --json -E \
  'import ./nix/settings.nix { redisSocket = "/r.sock"; settings = { body_limimt = 1; }; }' \
  | python3 scripts/json-to-toml.py >"$work/typo.toml"
if env -i PATH="$PATH" PYRON_CONFIG="$work/typo.toml" CREDENTIALS_DIRECTORY="$work/credentials" \
  target/debug/pyron-api --check-config 2>"$work/typo.err"; then
  echo "a misspelt setting was accepted" >&2
  exit 1
fi
echo "typo: refused ($(cat "$work/typo.err"))"

echo "==> nix/vm-test.nix: each VM test's script is Python that compiles"
for database in mongodb ferretdb; do
  nix-instantiate --eval --strict --json -E "(import ./nix/vm-test.nix {
      pkgs = { testers.runNixOSTest = test: test; lib.optionalString = cond: text: if cond then text else \"\"; };
      module = { }; database = \"$database\"; }).testScript" |
    python3 -c 'import json, sys; script = json.load(sys.stdin); compile(script, "testScript", "exec"); print(f"'"$database"': {len(script.splitlines())} lines")'
done
